"""Where one DERP connection's frames go: the write side of the relay driver."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable


class Sink:
    """Where one connection's frames go: a stream (client) or a mesh link (forwarder).

    No task per connection: frames are written by whoever routed them; a drain task exists
    only while the transport is backed up, and keep-alives come from a timer handle.

    Writes are corked for one event-loop turn: ``write`` collects frame parts and the first one
    schedules ``commit``, which hands them all to the transport at once. Routing a 64 KiB read
    (about 50 full-size packets) then costs one send() per destination instead of one per
    ``FLUSH_EVERY`` frames, with no added wait (the commit runs as soon as the read is done).

    A single corked part (the common case: one run of frames from one sender's read, see
    derp/runs.py) goes to ``write_one`` when given, so that the transport sends straight from
    the read buffer instead of joining the parts into a new bytes first.
    """

    __slots__ = (
        "_loop",
        "_write",
        "_write_one",
        "blocked",
        "close",
        "dead",
        "drain",
        "drainer",
        "interval",
        "last_write",
        "pending",
        "pending_bytes",
        "scheduled",
        "timer",
        "transport",
        "waiters",
        "write_timeout",
    )

    def __init__(
        self,
        write: Callable[[list[bytes | memoryview]], None],
        transport: asyncio.WriteTransport,
        drain: Callable[[], Awaitable[None]],
        close: Callable[[], None],
        write_timeout: float,
        interval: float | None,
        write_one: Callable[[bytes | memoryview], None] | None = None,
    ) -> None:
        self._write = write
        self._write_one = write_one
        # Made inside the loop that runs it; kept, as get_running_loop() per write shows in
        # profiles (it checks the pid).
        self._loop = asyncio.get_running_loop()
        self.transport = transport
        self.drain = drain
        self.close = close
        self.write_timeout = write_timeout
        self.interval = interval  # keep-alive period, None for none
        self.blocked = False
        self.dead = False
        self.last_write = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.drainer: asyncio.Task[None] | None = None
        self.pending: list[bytes | memoryview] | None = None  # None when empty: idle clients
        self.pending_bytes = 0
        self.scheduled = False
        # Readers of senders that stopped in front of a packet for us, woken on drain.
        self.waiters: list[Callable[[], None]] | None = None

    def write(self, parts: list[bytes | memoryview]) -> None:
        if self.pending is None:
            self.pending = list(parts)
        else:
            self.pending += parts
        self.pending_bytes += sum(map(len, parts))
        loop = self._loop
        self.last_write = loop.time()
        if not self.scheduled:
            self.scheduled = True
            loop.call_soon(self.commit)

    def commit(self) -> None:
        """Hand the corked parts to the transport (one send when its buffer is empty)."""
        self.scheduled = False
        parts = self.pending
        if not parts:
            return
        self.pending = None
        self.pending_bytes = 0
        if not self.dead and not self.transport.is_closing():
            if len(parts) == 1 and self._write_one is not None:
                self._write_one(parts[0])
            else:
                self._write(parts)

    def buffered(self) -> int:
        """Bytes written but not yet sent: corked plus held by the transport."""
        return self.pending_bytes + self.transport.get_write_buffer_size()
