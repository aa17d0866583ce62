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

from .noisestream import NoiseStream

log = logging.getLogger(__name__)

MAX_NOISE_BODY = 1 << 20  # bytes per request body (Headscale's cap): memory exhaustion
MAX_CONCURRENT_STREAMS = 100  # per connection: a client opening streams without end
# Our receive window per stream; clients send small JSON, the default 64 KiB suffices,
# but a larger window avoids a round trip for a 1 MiB body.
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
    task: asyncio.Task[None] | None = None
    too_large: bool = False


class H2Server:
    """HTTP/2 server over a NoiseStream. ``dispatch`` maps a request to a response."""

    def __init__(
        self,
        stream: NoiseStream,
        dispatch: NoiseHandler,
        machine_key: MachinePublic,
        protocol_version: int,
    ) -> None:
        self.stream = stream
        self.dispatch = dispatch
        self.machine_key = machine_key
        self.protocol_version = protocol_version
        cfg = h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
        self.h2 = h2.connection.H2Connection(config=cfg)
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
        try:
            if n > min(self.h2.local_flow_control_window(sid), self.h2.max_outbound_frame_size):
                return False
        except h2.exceptions.StreamClosedError:
            return False
        if not self.stream.writable():
            return False
        self.flush()  # whatever h2 has queued goes first
        self.h2.outbound_flow_control_window -= n
        self.h2.streams[sid].outbound_flow_control_window -= n
        self.stream.write(n.to_bytes(3, "big") + b"\x00\x00" + sid.to_bytes(4, "big") + data)
        return True

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data and not self._closed:
            self.stream.write(data)

    async def run(self) -> None:
        """Serve until the peer goes away; cancels handler tasks on the way out."""
        self.h2.local_settings = h2.settings.Settings(
            client=False,
            initial_values={
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: MAX_CONCURRENT_STREAMS,
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: INITIAL_WINDOW,
            },
        )
        self.h2.initiate_connection()
        self.h2.increment_flow_control_window(INITIAL_WINDOW * 4)
        self.flush()
        try:
            while True:
                try:
                    data = await self.stream.read()
                except ControlBaseError as exc:
                    log.info("ts2021 %s: %s", self.machine_key.short(), exc)
                    return
                if not data:
                    return
                try:
                    events = self.h2.receive_data(data)
                except h2.exceptions.ProtocolError as exc:
                    log.info("ts2021 %s: HTTP/2 error: %s", self.machine_key.short(), exc)
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
            hdrs = {str(k).lower(): str(v) for k, v in (ev.headers or [])}
            sid = ev.stream_id
            self._streams[sid] = _Stream(sid, hdrs)
            if ev.stream_ended is not None:
                self._start(sid)
        elif isinstance(ev, h2.events.DataReceived):
            s = self._streams.get(ev.stream_id)
            data = ev.data or b""
            if ev.flow_controlled_length:
                self.h2.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            if s is None:
                return
            if len(s.body) + len(data) > MAX_NOISE_BODY:
                s.too_large = True
            else:
                s.body += data
            if ev.stream_ended is not None:
                self._start(ev.stream_id)
        elif isinstance(ev, h2.events.StreamEnded):
            self._start(ev.stream_id)
        elif isinstance(ev, h2.events.StreamReset):
            s = self._streams.pop(ev.stream_id, None)
            if s is not None and s.task is not None:
                s.task.cancel()
        elif isinstance(ev, h2.events.WindowUpdated | h2.events.RemoteSettingsChanged):
            self._window_open.set()
        elif isinstance(ev, h2.events.ConnectionTerminated):
            self._closed = True

    def _start(self, sid: int) -> None:
        s = self._streams.get(sid)
        if s is None or s.task is not None:
            return
        s.task = asyncio.get_running_loop().create_task(self._serve_stream(s))

    async def _serve_stream(self, s: _Stream) -> None:
        try:
            if s.too_large:
                resp = Response.text(413, "request body too large\n")
            else:
                path, _, query = s.headers.get(":path", "/").partition("?")
                req = NoiseRequest(
                    method=s.headers.get(":method", "GET").upper(),
                    path=path,
                    query=query,
                    headers=s.headers,
                    body=bytes(s.body),
                    machine_key=self.machine_key,
                    protocol_version=self.protocol_version,
                    push=functools.partial(self.push_data, s.stream_id),
                )
                try:
                    resp = await self.dispatch(req)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("ts2021: handler for %s failed", path)
                    resp = Response.text(500, "internal server error\n")
            await self._send(s.stream_id, resp)
        except asyncio.CancelledError:
            pass
        except (ConnectionError, h2.exceptions.H2Error):
            pass
        finally:
            self._open_bodies.discard(s.stream_id)
            self._streams.pop(s.stream_id, None)

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
