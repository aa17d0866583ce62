"""The standard bind: one UDP socket (dual-stack where the host has IPv6) for the engine.

Endpoints are (IP text, port) with IPv4 in dotted form even on a dual-stack socket (io.udp
unmaps), so `wg show` says "10.99.0.1:51820", not "::ffff:10.99.0.1". Rebinding (a new
listen-port) opens the new socket first, so a port in use fails without losing the old one;
a thread blocked on the old socket gets BindClosed and moves to the new one.
"""

from __future__ import annotations

import errno
import socket
import threading

from meshscale.io.udp import UDPSocket
from meshscale.wireguard import Endpoint

from .bind import RX_BATCH, BindClosed


class UDPBind:
    def __init__(self) -> None:
        self._sock: UDPSocket | None = None
        self._dual = socket.has_ipv6
        self._closed = False
        self._ready = threading.Event()

    def open(self, port: int) -> int:
        new: UDPSocket | None = None
        if self._dual:
            try:
                new = UDPSocket.bind("::", port)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise
                self._dual = False  # no IPv6 in this namespace: plain IPv4
        if new is None:
            new = UDPSocket.bind("0.0.0.0", port)
        old, self._sock = self._sock, new
        self._ready.set()
        if old is not None:
            old.close()
        return int(new.getsockname()[1])

    def send(self, ep: Endpoint, messages: list[list[bytes]]) -> None:
        sock = self._sock
        if sock is not None:
            sock.send_batch(ep, messages)

    def send_one(self, ep: Endpoint, data: bytes) -> None:
        sock = self._sock
        if sock is not None:
            sock.send_batch(ep, [[data]])

    def receive(self) -> list[tuple[bytes | memoryview, Endpoint]]:
        if not self._ready.wait(0.5):
            raise BindClosed
        sock = self._sock
        if sock is None or self._closed:
            raise BindClosed
        try:
            batch = sock.recv_batch(RX_BATCH, lone=True)  # a lone datagram goes up at once
        except OSError as exc:
            if self._closed or sock is not self._sock:
                raise BindClosed from exc
            raise
        if sock is not self._sock:
            raise BindClosed
        return batch  # type: ignore[return-value]  # io.udp already unmaps IPv4 peers

    def close(self) -> None:
        self._closed = True
        self._ready.set()
        if self._sock is not None:
            self._sock.close()
