"""HTTP/2 served inside a ts2021 connection: the control server's side.

Layers (docs/protocol/control.md §2.4-2.7)::

    UpgradeStream (raw TCP/TLS after the 101)
      -> NoiseStream: controlbase records <-> plaintext (noisestream.py)
        -> H2Server: h2c with prior knowledge, one task per request stream

``H2Server`` is the driver of the sans-IO ``h2`` state machine: after every input it feeds
h2, handles the events and flushes ``data_to_send``. Handlers get a ``NoiseRequest`` (the
Noise-authenticated machine key travels with it) and return the same ``io.http.Response``
the HTTP/1.1 server takes: its body is bytes or an async iterable of chunks; each chunk is
flushed as soon as it is produced, which is what the map long poll needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

from meshscale.controlbase import ControlBaseError
from meshscale.io.http import Response
from meshscale.key import MachinePublic

from .limits import NODE_BUDGET, Budget, NoiseGate, NoiseLimits, Ticket
from .noisestream import NoiseStream

log = logging.getLogger(__name__)

MAX_NOISE_BODY = NODE_BUDGET.max_body  # bytes per request body (Headscale's cap)
MAX_CONCURRENT_STREAMS = NODE_BUDGET.max_streams  # per node connection
# Our receive window per stream; clients send small JSON, the default 64 KiB suffices,
# but a larger window avoids a round trip for a 1 MiB body. The per-connection budget
# (limits.py), not the window, bounds what a connection may buffer.
INITIAL_WINDOW = 1 << 20  # bytes


@dataclass(slots=True)
class NoiseRequest:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    machine_key: MachinePublic
    protocol_version: int
    # Writes one chunk of this request's streaming response body at once, from outside the
    # handler's task; False when it cannot go now (see H2Server.push_data).
    push: Callable[[bytes], bool] | None = None
    # Where the connection comes from, as limits.source_of: an IPv4 address or IPv6 /64.
    source: str = ""


NoiseHandler = Callable[[NoiseRequest], Awaitable[Response]]


class StreamAborted(Exception):
    """Raised by a streaming body before its first chunk: answer ``status`` instead."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text


@dataclass(slots=True)
class _Stream:
    stream_id: int
    headers: dict[str, str]
    body: bytearray = field(default_factory=bytearray)
    started: float = 0.0  # loop time of the headers: the body deadline runs from here
    task: asyncio.Task[None] | None = None
    refused: tuple[int, str] | None = None  # answer this instead of dispatching
    reserved: int = 0  # body bytes counted in the gate until the stream ends


class H2Server:
    """HTTP/2 server over a NoiseStream. ``dispatch`` maps a request to a response."""

    def __init__(
        self,
        stream: NoiseStream,
        dispatch: NoiseHandler,
        machine_key: MachinePublic,
        protocol_version: int,
        *,
        gate: NoiseGate | None = None,
        ticket: Ticket | None = None,
        classify: Callable[[], bool] | None = None,
    ) -> None:
        self.stream = stream
        self.dispatch = dispatch
        self.machine_key = machine_key
        self.protocol_version = protocol_version
        # Without a gate (tests of the HTTP/2 layer alone) the connection is a node's.
        self.gate = gate if gate is not None else NoiseGate(NoiseLimits())
        self.ticket = ticket if ticket is not None else Ticket("?", node=True)
        self.classify = classify  # True once the machine key belongs to a registered node
        cfg = h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
        self.h2 = h2.connection.H2Connection(config=cfg)
        self._last_active = 0.0
        self._streams: dict[int, _Stream] = {}
        self._window_open = asyncio.Event()
        self._closed = False
        self._open_bodies: set[int] = set()  # streaming bodies whose headers went out

    def push_data(self, sid: int, data: bytes) -> bool:
        """Write ``data`` as one DATA frame on stream ``sid`` now, synchronously.

        The map fan-out calls this once per stream per change: building the 9-byte frame
        header here skips a task switch and h2's per-frame objects and state machine (DATA
        on an open stream changes no h2 state but the flow-control windows, which are
        debited here). False, with nothing written, when the frame cannot go at once: the
        headers are not out yet, the body ended, a window or the socket buffer is full."""
        n = len(data)
        if self._closed or sid not in self._open_bodies or not n:
            return False
        conn = self.h2
        st = conn.streams.get(sid)  # (h2's local_flow_control_window, without its lookups)
        if st is None or st.closed:
            return False
        window = min(conn.outbound_flow_control_window, st.outbound_flow_control_window)
        if n > min(window, conn.max_outbound_frame_size) or not self.stream.writable():
            return False
        self.flush()  # whatever h2 has queued goes first
        conn.outbound_flow_control_window -= n
        st.outbound_flow_control_window -= n
        self.stream.write(n.to_bytes(3, "big") + b"\x00\x00" + sid.to_bytes(4, "big") + data)
        return True

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data and not self._closed:
            self.stream.write(data)

    @property
    def budget(self) -> Budget:
        return self.gate.budget(self.ticket)

    def _reclassify(self) -> None:
        """An unauthenticated connection whose machine key has since registered (it did so
        on this connection, typically) gets a node's budget."""
        if self.ticket.node or self.classify is None or not self.classify():
            return
        self.gate.promote(self.ticket)
        self.h2.update_settings(
            {h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: self.budget.max_streams}
        )

    def _deadline(self) -> float | None:
        """When the connection must have made progress: the oldest unfinished body's
        deadline, else (no request being served) the idle deadline, else none (a running
        handler, such as the map long poll, bounds itself and its writes)."""
        b = self.budget
        pending = [s.started for s in self._streams.values() if s.task is None]
        if pending:
            return min(pending) + b.body_timeout
        if any(s.task is not None for s in self._streams.values()):
            return None
        return self._last_active + b.idle_timeout

    def _oversized_input(self) -> str | None:
        """Check what h2 holds but has not parsed: it reads a frame's declared length only
        once the whole frame arrived, so a 16 MiB frame header would buffer 16 MiB first."""
        buf = self.h2.incoming_buffer
        head = bytes(buf._data[:3])
        if len(head) == 3 and int.from_bytes(head, "big") > self.gate.limits.max_frame:
            return "frame too large"
        held = sum(len(f.data) for f in buf._headers_buffer)
        if held > self.gate.limits.max_header_list:
            return "header block too large"
        return None

    async def _read(self) -> bytes | None:
        """The next plaintext; None when a deadline passed."""
        loop = asyncio.get_running_loop()
        while True:
            deadline = self._deadline()
            wait = self.budget.idle_timeout if deadline is None else deadline - loop.time()
            if wait > 0:
                try:
                    async with asyncio.timeout(wait):
                        return await self.stream.read()
                except TimeoutError:
                    pass
            if deadline is None:
                continue  # a handler is running: only re-check
            self._reclassify()
            if self._deadline() == deadline:
                return None

    async def run(self) -> None:
        """Serve until the peer goes away; cancels handler tasks on the way out."""
        lim = self.gate.limits
        self.h2.local_settings = h2.settings.Settings(
            client=False,
            initial_values={
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: self.budget.max_streams,
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: INITIAL_WINDOW,
                h2.settings.SettingCodes.MAX_FRAME_SIZE: lim.max_frame,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: lim.max_header_list,
            },
        )
        self.h2.max_inbound_frame_size = lim.max_frame
        self.h2.decoder.max_header_list_size = lim.max_header_list
        self.h2.initiate_connection()
        self.h2.increment_flow_control_window(INITIAL_WINDOW * 4)
        self.flush()
        who = self.machine_key.short()
        self._last_active = asyncio.get_running_loop().time()
        try:
            while True:
                try:
                    data = await self._read()
                except ControlBaseError as exc:
                    log.info("ts2021 %s: %s", who, exc)
                    return
                if data is None:
                    self.gate.closed_idle += 1
                    log.info("ts2021 %s: no progress before the deadline; closing", who)
                    self.h2.close_connection(h2.errors.ErrorCodes.NO_ERROR)
                    self.flush()
                    return
                if not data:
                    return
                self._last_active = asyncio.get_running_loop().time()
                try:
                    events = self.h2.receive_data(data)
                    bad = self._oversized_input()
                except Exception as exc:
                    # h2 raises ProtocolError for most bad input, but a header that is not
                    # UTF-8 comes out as UnicodeDecodeError: any of them ends the connection.
                    log.info("ts2021 %s: bad HTTP/2 input: %s: %s", who, type(exc).__name__, exc)
                    with contextlib.suppress(Exception):
                        self.h2.close_connection(h2.errors.ErrorCodes.PROTOCOL_ERROR)
                    self.flush()
                    return
                if bad is not None:
                    log.info("ts2021 %s: %s; closing", who, bad)
                    self.h2.close_connection(h2.errors.ErrorCodes.FRAME_SIZE_ERROR)
                    self.flush()
                    return
                for ev in events:
                    self._handle(ev)
                self.flush()
                await self.stream.drain()
        finally:
            self._closed = True
            self._window_open.set()
            tasks = [s.task for s in self._streams.values() if s.task is not None]
            for t in tasks:
                t.cancel()
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)

    def _handle(self, ev: h2.events.Event) -> None:
        if isinstance(ev, h2.events.RequestReceived):
            self._reclassify()
            hdrs = {str(k).lower(): str(v) for k, v in (ev.headers or [])}
            sid = ev.stream_id
            self._streams[sid] = _Stream(sid, hdrs, started=asyncio.get_running_loop().time())
            if ev.stream_ended is not None:
                self._start(sid)
        elif isinstance(ev, h2.events.DataReceived):
            s = self._streams.get(ev.stream_id)
            data = ev.data or b""
            if ev.flow_controlled_length:
                with contextlib.suppress(h2.exceptions.StreamClosedError):
                    self.h2.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            if s is None or s.task is not None:
                return  # a refused stream's remaining body: discarded
            if len(s.body) + len(data) > self.budget.max_body:
                self._refuse(s, 413, "request body too large\n")
            elif not self.gate.reserve(self.ticket, len(data)):
                self._refuse(s, 503, "server busy: too much request data buffered\n")
            else:
                s.reserved += len(data)
                s.body += data
                if ev.stream_ended is not None:
                    self._start(ev.stream_id)
        elif isinstance(ev, h2.events.StreamEnded):
            self._start(ev.stream_id)
        elif isinstance(ev, h2.events.StreamReset):
            s = self._streams.pop(ev.stream_id, None)
            if s is not None:
                if s.task is not None:
                    s.task.cancel()
                self._forget(s)
        elif isinstance(ev, h2.events.WindowUpdated | h2.events.RemoteSettingsChanged):
            self._window_open.set()
        elif isinstance(ev, h2.events.ConnectionTerminated):
            self._closed = True

    def _refuse(self, s: _Stream, status: int, text: str) -> None:
        """Answer now, before the body ends, and drop what was buffered."""
        self.gate.rejected_bodies += 1
        self._forget(s)
        s.body = bytearray()
        s.refused = (status, text)
        self._start(s.stream_id)

    def _forget(self, s: _Stream) -> None:
        self.gate.free(self.ticket, s.reserved)
        s.reserved = 0

    def _start(self, sid: int) -> None:
        s = self._streams.get(sid)
        if s is None or s.task is not None:
            return
        s.task = asyncio.get_running_loop().create_task(self._serve_stream(s))

    async def _serve_stream(self, s: _Stream) -> None:
        try:
            if s.refused is not None:
                resp = Response.text(*s.refused)
            else:
                path, _, query = s.headers.get(":path", "/").partition("?")
                body, s.body = bytes(s.body), bytearray()
                req = NoiseRequest(
                    method=s.headers.get(":method", "GET").upper(),
                    path=path,
                    query=query,
                    headers=s.headers,
                    body=body,
                    machine_key=self.machine_key,
                    protocol_version=self.protocol_version,
                    push=functools.partial(self.push_data, s.stream_id),
                    source=self.ticket.source,
                )
                try:
                    resp = await self.dispatch(req)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("ts2021: handler for %s failed", path)
                    resp = Response.text(500, "internal server error\n")
            await self._send(s.stream_id, resp)
            if s.refused is not None and not self._closed:
                # The client may still be sending the body: stop it.
                with contextlib.suppress(h2.exceptions.H2Error):
                    self.h2.reset_stream(s.stream_id, h2.errors.ErrorCodes.CANCEL)
                self.flush()
        except asyncio.CancelledError:
            pass
        except (ConnectionError, h2.exceptions.H2Error):
            pass
        finally:
            self._forget(s)
            self._open_bodies.discard(s.stream_id)
            self._streams.pop(s.stream_id, None)
            self._last_active = asyncio.get_running_loop().time()

    async def _send(self, sid: int, resp: Response) -> None:
        if isinstance(resp.body, bytes):
            self._send_headers(sid, resp, len(resp.body))
            if resp.body:
                await self._send_data(sid, resp.body, end=True)
            return
        body = aiter(resp.body)
        try:
            # Headers go out with the first chunk, so a stream that fails before producing
            # anything can still answer with an error status: an empty 200 on the map poll
            # makes the client retry forever (docs/protocol/control.md §7.4).
            try:
                first: bytes | None = await anext(body)
            except StopAsyncIteration:
                first = None
            except StreamAborted as exc:
                await self._send(sid, Response.text(exc.status, exc.text))
                return
            self._send_headers(sid, resp, None)
            more = first is not None
            if first:
                await self._send_data(sid, first, end=False)
            self._open_bodies.add(sid)
            first = None  # a long stream must not pin its first (full map) message
            if more:
                async for chunk in body:
                    await self._send_data(sid, chunk, end=False)
                    chunk = b""  # release it while waiting for the next one
        finally:
            aclose = getattr(body, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()
        self._open_bodies.discard(sid)
        if not self._closed:
            self.h2.end_stream(sid)
            self.flush()

    def _send_headers(self, sid: int, resp: Response, length: int | None) -> None:
        headers = [(":status", str(resp.status))]
        if resp.content_type:
            headers.append(("content-type", resp.content_type))
        headers.extend((k.lower(), v) for k, v in resp.headers)
        if length is not None:
            headers.append(("content-length", str(length)))
        self.h2.send_headers(sid, headers, end_stream=length == 0)
        self.flush()

    async def _send_data(self, sid: int, data: bytes, end: bool) -> None:
        view = memoryview(data)
        while True:
            if self._closed:
                raise ConnectionError("connection closed")
            window = self.h2.local_flow_control_window(sid)
            n = min(len(view), window, self.h2.max_outbound_frame_size)
            if n <= 0 and len(view) > 0:
                self._window_open.clear()
                await self._window_open.wait()
                continue
            last = n == len(view)
            self.h2.send_data(sid, bytes(view[:n]), end_stream=end and last)
            self.flush()
            view = view[n:]
            if last:
                await self.stream.drain()
                return
