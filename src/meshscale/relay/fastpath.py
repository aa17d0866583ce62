"""The read side of a logged-in DERP client connection, without a stream reader.

After login the driver hands the connection's transport to a ``DERPReader``
(``RawStream.take_over``). The transport then reads straight into the reader's own buffer
(``asyncio.BufferedProtocol``), and every complete frame of each read is routed in one call
to the core (``Relay.handle_buffer``), inside the event loop's read callback: no task
wake-up, no copy into a stream buffer and out again, no per-frame slicing into ``bytes``.
SendPackets become RecvPackets in place (derp/runs.py), and a run of them to one destination
of 1 KiB or more is forwarded as a view of the read buffer, so a buffer is never overwritten
once a view of it was handed out; a fresh one is allocated instead.

Backpressure: a packet for a destination whose transport is backed up stops the walk in front
of it; the reader stops reading (``pause_reading``, so TCP pushes back on the sender) until
that destination drained (``unstall``) or ``MAX_STALL`` passed; then it drops packets for it
again until it drained. A sender thus waits at most ``MAX_STALL`` per backed-up episode of
one destination, and memory stays bounded: the unread bytes stay in the kernel.

Buffers adapt: an idle connection holds none (one is allocated when bytes arrive and dropped
once every byte was consumed), reads start at ``MIN_READ`` and double while they fill the
buffer, up to ``MAX_READ``. A frame's announced length is checked against the bound before
its payload is awaited (``Relay.handle_buffer``), so the buffer never exceeds
``max(MAX_READ, MAX_SERVER_FRAME + 5)``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from ..derp import frames as F
from ..derp.errors import DERPError
from ..derp.relay import ConnID, Relay
from ..derp.runs import read_buffer
from ..io.stream import PassThrough

MIN_READ = 4 * 1024  # bytes: the first buffer of a connection (idle clients send little)
MAX_READ = 256 * 1024  # bytes: the largest read
# Seconds a sender waits, at most, for one backed-up destination before its packets for it
# are queued and head-dropped again (as derper always does): backpressure for receivers
# that are slow but reading, never more than a short stall for one that stopped.
MAX_STALL = 0.05


class DERPReader(PassThrough):
    """Feeds one connection's bytes to the routing core; ``done`` resolves at the end with
    None (EOF or connection lost) or the DERPError that closed it."""

    __slots__ = (
        "_avail",
        "_cid",
        "_end",
        "_exported",
        "_loop",
        "_max_frame",
        "_max_stall",
        "_on_routed",
        "_on_stall",
        "_relay",
        "_size",
        "_stalled_on",
        "_start",
        "_timer",
        "_transport",
        "_view",
        "done",
    )

    def __init__(
        self,
        old: asyncio.BaseProtocol,
        relay: Relay,
        cid: ConnID,
        on_routed: Callable[[], None],
        transport: asyncio.ReadTransport | None = None,
        on_stall: Callable[[ConnID, DERPReader], None] | None = None,
        max_frame: int = F.MAX_SERVER_FRAME,
        max_stall: float = MAX_STALL,
    ) -> None:
        """``on_stall(dst, reader)``: reading stopped in front of a packet for ``dst``, whose
        transport is backed up; call ``reader.unstall()`` once it drained. Without a
        transport and ``on_stall``, packets for backed-up destinations are queued (and
        head-dropped) at once."""
        super().__init__(old)
        self._transport = transport
        self._on_stall = on_stall
        self._stalled_on: ConnID = 0  # the destination this reader waits for
        self._timer: asyncio.TimerHandle | None = None
        self._max_stall = max_stall
        self._relay = relay
        self._cid = cid
        self._on_routed = on_routed
        self._max_frame = max_frame
        self._loop = asyncio.get_running_loop()
        self.done: asyncio.Future[DERPError | None] = self._loop.create_future()
        self._view: memoryview | None = None
        self._start = 0  # first byte not yet consumed
        self._end = 0  # end of the bytes received
        self._avail = 0  # bytes offered by the last get_buffer
        self._exported = False  # a view of the current buffer was handed out
        self._size = MIN_READ

    def get_buffer(self, sizehint: int) -> memoryview:
        view = self._view
        if view is None:
            view = self._view = memoryview(read_buffer(self._size))
            self._start = self._end = 0
            self._exported = False
        elif self._end == len(view):  # only while stalled: a transport that reads anyway
            tail = view[self._start : self._end].tobytes()
            view = self._view = memoryview(read_buffer(len(tail) + MIN_READ))
            view[: len(tail)] = tail
            self._start, self._end, self._exported = 0, len(tail), False
        self._avail = len(view) - self._end
        return view[self._end :]

    def buffer_updated(self, nbytes: int) -> None:
        if self._view is None or self.done.done():
            return
        self._end += nbytes
        if nbytes >= self._avail:
            self._size = min(MAX_READ, self._size * 2)
        elif nbytes < self._size // 4:
            self._size = max(MIN_READ, self._size // 2)
        if self._stalled_on:
            # Bytes despite pause_reading (TLS may still hand over what it decrypted): stop
            # waiting, so the buffer stays bounded.
            self._give_up()
            return
        self._process()

    def _process(self) -> None:
        """Route what is buffered; stop reading if a packet waits for a backed-up peer."""
        view = self._view
        if view is None:
            return
        hold = self._on_stall is not None and self._transport is not None
        try:
            pos, exported, blocked = self._relay.handle_buffer(
                self._cid, view, self._start, self._end, self._loop.time(), self._max_frame, hold
            )
        except DERPError as exc:
            self._finish(exc)
            return
        finally:
            self._on_routed()
        self._start = pos
        if exported:
            self._exported = True
        if blocked and self._transport is not None and self._on_stall is not None:
            self._stalled_on = blocked
            self._transport.pause_reading()
            self._timer = self._loop.call_later(self._max_stall, self._give_up)
            self._on_stall(blocked, self)
            return
        self._settle(view, pos, self._end)

    def unstall(self) -> None:
        """The destination this reader waited for drained (or left): read on."""
        if not self._stalled_on:
            return
        self._resume()

    def _give_up(self) -> None:
        """Waited too long: packets for that destination are queued and dropped again."""
        if self._stalled_on:
            self._relay.release_hold(self._stalled_on)
            self._resume()

    def _resume(self) -> None:
        self._stalled_on = 0
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.done.done():
            return
        self._process()
        if not self._stalled_on and not self.done.done() and self._transport is not None:
            self._transport.resume_reading()

    def feed(self, data: bytes) -> None:
        """Bytes that arrived before the take-over, in order, as if just read."""
        i = 0
        while i < len(data) and not self.done.done():
            dst = self.get_buffer(-1)
            n = min(len(dst), len(data) - i)
            dst[:n] = data[i : i + n]
            i += n
            self.buffer_updated(n)

    def _settle(self, view: memoryview, pos: int, end: int) -> None:
        """Make room for the rest of a partial frame; drop a buffer with nothing pending."""
        size = len(view)
        rem = end - pos
        if not rem:
            if self._exported or size > MIN_READ:
                self._view = None
            else:
                self._start = self._end = 0
            return
        need = F.FRAME_HEADER_LEN
        if rem >= F.FRAME_HEADER_LEN:
            need += F.HEADER.unpack_from(view, pos)[1]
        if size - pos >= need and size - end >= min(need - rem, self._size // 4):
            return  # the frame fits where it is, and the next read is not tiny
        tail = view[pos:end].tobytes()
        new_size = max(self._size, need)
        if self._exported or new_size > size:
            view = self._view = memoryview(read_buffer(new_size))
            self._exported = False
        view[:rem] = tail
        self._start = 0
        self._end = rem

    def eof_received(self) -> bool:
        if self._stalled_on:
            self._relay.release_hold(self._stalled_on)  # route what came before the EOF
            self._stalled_on = 0
            self._process()
        self._finish(None)
        return False  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self._finish(None)
        self._view = None
        super().connection_lost(exc)

    def _finish(self, exc: DERPError | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._stalled_on = 0
        if not self.done.done():
            self.done.set_result(exc)
