"""The read side of a logged-in DERP client connection, without a stream reader.

After login the driver hands the connection's transport to a ``DERPReader``
(``RawStream.take_over``). The transport then reads straight into the reader's own buffer
(``asyncio.BufferedProtocol``), and every complete frame of each read is routed in one call
to the core (``Relay.handle_buffer``), inside the event loop's read callback: no task
wake-up, no copy into a stream buffer and out again, no per-frame slicing into ``bytes``.
Forwarded packets of 1 KiB or more are views of the read buffer, so a buffer is never
overwritten once a view of it was handed out; a fresh one is allocated instead.

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
from ..io.stream import PassThrough

MIN_READ = 4 * 1024  # bytes: the first buffer of a connection (idle clients send little)
MAX_READ = 256 * 1024  # bytes: the largest read


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
        "_on_routed",
        "_relay",
        "_size",
        "_start",
        "_view",
        "done",
    )

    def __init__(
        self,
        old: asyncio.BaseProtocol,
        relay: Relay,
        cid: ConnID,
        on_routed: Callable[[], None],
        max_frame: int = F.MAX_SERVER_FRAME,
    ) -> None:
        super().__init__(old)
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
            view = self._view = memoryview(bytearray(self._size))
            self._start = self._end = 0
            self._exported = False
        self._avail = len(view) - self._end
        return view[self._end :]

    def buffer_updated(self, nbytes: int) -> None:
        view = self._view
        if view is None or self.done.done():
            return
        end = self._end = self._end + nbytes
        try:
            pos, exported = self._relay.handle_buffer(
                self._cid, view, self._start, end, self._loop.time(), self._max_frame
            )
        except DERPError as exc:
            self._finish(exc)
            return
        finally:
            self._on_routed()
        self._start = pos
        if exported:
            self._exported = True
        if nbytes >= self._avail:
            self._size = min(MAX_READ, self._size * 2)
        elif nbytes < self._size // 4:
            self._size = max(MIN_READ, self._size // 2)
        self._settle(view, pos, end)

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
            view = self._view = memoryview(bytearray(new_size))
            self._exported = False
        view[:rem] = tail
        self._start = 0
        self._end = rem

    def eof_received(self) -> bool:
        self._finish(None)
        return False  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self._finish(None)
        self._view = None
        super().connection_lost(exc)

    def _finish(self, exc: DERPError | None) -> None:
        if not self.done.done():
            self.done.set_result(exc)
