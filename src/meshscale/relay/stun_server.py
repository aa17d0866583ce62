"""STUN server: answers binding requests on UDP (3478 by default), IPv4 and IPv6.

Stateless: every valid Binding Request gets a Binding Success Response from the same socket,
reflecting the source address (docs/protocol/derp-disco-stun.md §3.2). Anything else is ignored and
counted.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from dataclasses import dataclass
from typing import cast

from .. import stun

log = logging.getLogger(__name__)

STUN_PORT = 3478


@dataclass(slots=True)
class STUNCounters:
    requests: int = 0
    responses: int = 0
    ignored: int = 0
    send_errors: int = 0


class STUNProtocol(asyncio.DatagramProtocol):
    def __init__(self, counters: STUNCounters, require_tailnode: bool = False) -> None:
        self.counters = counters
        self.require_tailnode = require_tailnode
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self.counters.requests += 1
        try:
            txid = stun.parse_request(data, require_tailnode=self.require_tailnode)
            ip = ipaddress.ip_address(str(addr[0]).split("%", 1)[0])
            resp = stun.response(txid, ip, int(addr[1]))
        except ValueError:
            self.counters.ignored += 1
            return
        assert self.transport is not None
        try:
            self.transport.sendto(resp, addr)
            self.counters.responses += 1
        except OSError:
            self.counters.send_errors += 1

    def error_received(self, exc: Exception) -> None:
        self.counters.send_errors += 1


class STUNServer:
    """Listens on one address or, with host None/"" , on 0.0.0.0 and :: separately."""

    def __init__(self, *, require_tailnode: bool = False) -> None:
        self.counters = STUNCounters()
        self.require_tailnode = require_tailnode
        self.transports: list[asyncio.DatagramTransport] = []

    async def start(self, host: str | None = None, port: int = STUN_PORT) -> list[tuple[str, int]]:
        """Bind and return the bound (host, port) pairs."""
        loop = asyncio.get_running_loop()
        hosts: list[str] = [host] if host else ["0.0.0.0", "::"]
        bound: list[tuple[str, int]] = []
        for h in hosts:
            family = socket.AF_INET6 if ":" in h else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_DGRAM)
            try:
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind((h, port))
            except OSError:
                sock.close()
                if host or family == socket.AF_INET:
                    raise
                log.info("stun: IPv6 unavailable; serving IPv4 only")
                continue
            transport, _ = await loop.create_datagram_endpoint(
                lambda: STUNProtocol(self.counters, self.require_tailnode), sock=sock
            )
            self.transports.append(transport)
            name = sock.getsockname()
            bound.append((str(name[0]), int(name[1])))
            port = port or int(name[1])  # the v6 socket takes the same ephemeral port
        return bound

    @property
    def port(self) -> int | None:
        """The bound UDP port (useful after ``start(host, 0)``), or None before start."""
        if not self.transports:
            return None
        return int(self.transports[0].get_extra_info("sockname")[1])

    def close(self) -> None:
        for t in self.transports:
            t.close()
        self.transports.clear()
