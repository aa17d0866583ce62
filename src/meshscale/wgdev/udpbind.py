"""The standard bind: one UDP socket (dual-stack where the host has IPv6) for the engine.

Endpoints are (IP text, port) with IPv4 in dotted form even on a dual-stack socket, so the
core and `wg show` see "10.99.0.1:51820", not "::ffff:10.99.0.1". Rebinding (a new
listen-port) opens the new socket first, so a port in use fails without losing the old one;
a thread blocked on the old socket gets BindClosed and moves to the new one.
"""

from __future__ import annotations

import errno
import socket
import threading

from meshscale.io.udp import UDPSocket
from meshscale.wgdev.engine import RX_BATCH, BindClosed
from meshscale.wireguard import Endpoint

_MAPPED = "::ffff:"


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

    def _addr(self, ep: Endpoint) -> tuple[str, int]:
        host = ep[0]
        if self._dual and ":" not in host:
            host = _MAPPED + host
        return (host, ep[1])

    def send(self, ep: Endpoint, messages: list[list[bytes]]) -> None:
        sock = self._sock
        if sock is not None:
            sock.send_batch(self._addr(ep), messages)

    def send_one(self, ep: Endpoint, data: bytes) -> None:
        sock = self._sock
        if sock is not None:
            sock.send_batch(self._addr(ep), [[data]])

    def receive(self) -> list[tuple[bytes | memoryview, Endpoint]]:
        if not self._ready.wait(0.5):
            raise BindClosed
        sock = self._sock
        if sock is None or self._closed:
            raise BindClosed
        try:
            batch = sock.recv_batch(RX_BATCH)
        except OSError as exc:
            if self._closed or sock is not self._sock:
                raise BindClosed from exc
            raise
        if sock is not self._sock:
            raise BindClosed
        out: list[tuple[bytes | memoryview, Endpoint]] = []
        for data, addr in batch:
            host = addr[0]
            if host.startswith(_MAPPED) and "." in host:
                host = host[len(_MAPPED) :]
            out.append((data, (host, int(addr[1]))))
        return out

    def close(self) -> None:
        self._closed = True
        self._ready.set()
        if self._sock is not None:
            self._sock.close()
