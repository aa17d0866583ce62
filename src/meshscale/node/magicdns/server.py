"""Quad-100 reached through the TUN: the engine hands us every packet addressed to
100.100.100.100 / fd7a:115c:a1e0::53 (`intercept`, on its TX thread); we answer DNS on UDP
and TCP port 53 with the forwarder (on the asyncio loop) and write the answers back into the
TUN (`inject`). Anything else to quad-100 is dropped and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Coroutine, Sequence

from meshscale.dns import quad100
from meshscale.packet import IPPROTO_TCP, IPPROTO_UDP

from .forward import Forwarder

log = logging.getLogger("meshscale.magicdns")

MAX_QUEUED = 1024  # packets handed to the loop and not yet handled
TIMER_INTERVAL = 5.0  # seconds between TCP idle sweeps


class Quad100:
    def __init__(
        self,
        forwarder: Forwarder,
        inject: Callable[[list[bytes]], object],
        loop: asyncio.AbstractEventLoop,
        *,
        rand: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.forwarder = forwarder
        self._inject = inject
        self._loop = loop
        self.tcp = quad100.TCPServer(rand)
        self.stats: dict[str, int] = {}
        # Packets handed to the loop: counted up by the TX thread, handled by the loop; each
        # counter has one writer, so no lock is needed and neither can drift.
        self._enqueued = 0
        self._handled = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._timer: asyncio.Task[None] | None = None

    def _count(self, what: str) -> None:
        self.stats[what] = self.stats.get(what, 0) + 1

    def start(self) -> None:
        self._timer = self._loop.create_task(self._sweep())

    async def close(self) -> None:
        tasks = [*self._tasks, *([self._timer] if self._timer else [])]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t

    # ---- TX thread ----

    def intercept(self, packets: Sequence[bytes | memoryview]) -> list[bytes | memoryview]:
        """Take quad-100's packets out of a TUN batch; return the others untouched."""
        match = quad100.match
        if not any(match(p) for p in packets):
            return list(packets)
        rest: list[bytes | memoryview] = []
        for p in packets:
            if not match(p):
                rest.append(p)
            elif self._enqueued - self._handled >= MAX_QUEUED:
                self._count("dropped_queue_full")
            else:
                self._enqueued += 1
                self._loop.call_soon_threadsafe(self._on_packet, bytes(p))
        return rest

    # ---- loop ----

    def _on_packet(self, p: bytes) -> None:
        self._handled += 1
        proto = p[9] if p[0] >> 4 == 4 else p[6]
        if proto == IPPROTO_UDP:
            q = quad100.parse_udp(p)
            if q is None:
                self._count("dropped_not_dns")
                return
            self._count("udp")
            self._spawn(self._answer_udp(q))
        elif proto == IPPROTO_TCP:
            out, queries = self.tcp.receive(p, self._loop.time())
            self._write(out)
            for key, wire in queries:
                self._count("tcp")
                self._spawn(self._answer_tcp(key, wire))
        else:
            self._count("dropped_not_dns")

    def _spawn(self, coro: Coroutine[object, object, None]) -> None:
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _write(self, packets: list[bytes]) -> None:
        if packets:
            try:
                self._inject(packets)
            except OSError as exc:
                self._count("inject_error")
                log.debug("writing DNS answers to the TUN: %s", exc)

    async def _answer_udp(self, q: quad100.UDPQuery) -> None:
        try:
            reply = await self.forwarder.query(q.payload)
        except Exception:  # a bug must cost one answer, never the loop
            log.exception("answering a DNS query")
            self._count("error")
            return
        if reply is not None:
            self._write([quad100.udp_reply(q, reply)])

    async def _answer_tcp(self, key: quad100.FlowKey, wire: bytes) -> None:
        reply: bytes | None = None
        try:
            reply = await self.forwarder.query(wire, tcp=True)
        except Exception:
            log.exception("answering a DNS query over TCP")
            self._count("error")
        self._write(self.tcp.send(key, reply))

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(TIMER_INTERVAL)
            self._write(self.tcp.handle_timer(self._loop.time()))


__all__ = ["Quad100"]
