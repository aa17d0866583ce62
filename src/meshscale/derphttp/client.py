"""One DERP connection over HTTP (tailscale derp/derphttp): dial, upgrade, log in, move bytes.

The protocol lives in the sans-IO ``meshscale.derp.client.ClientSession``; this module only
dials, performs the HTTP upgrade (docs/protocol/derp-disco-stun.md §1.1: ``Upgrade: DERP``, or a
WebSocket with subprotocol ``derp``, 1.3) with io.httpclient, and moves bytes. Reconnecting regions
and home switching are regions.py.

``DERPClient.recv()`` must be running (in one task) for pongs and server pings to be handled;
``ping()`` awaits a pong that ``recv()`` consumes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl as ssl_module
from collections.abc import Callable
from urllib.parse import urlsplit

from wsproto.connection import ConnectionType

from ..derp import frames as F
from ..derp.client import ClientEvent, ClientSession, Connected
from ..derp.errors import HandshakeError
from ..derp.info import ClientInfo
from ..io import httpclient
from ..io.stream import RawStream
from ..key import NodePrivate, NodePublic
from .websocket import WebSocketStream, client_handshake_headers

CONNECT_TIMEOUT = 10.0  # seconds: dial + TLS + upgrade + login (1.1)
READ_TIMEOUT = F.CLIENT_READ_TIMEOUT  # seconds of server silence before giving up
MAX_RESPONSE_HEAD = 16 * 1024  # bytes of HTTP response head: a hostile server's endless headers
MAX_REFUSAL_BODY = 4096  # bytes of a refusal's body read (for the error message)
MAX_WRITE_BUFFER = 1 << 20  # bytes buffered in the transport before send() drops
READ_CHUNK = 64 * 1024  # bytes per socket read


class DERPClient:
    """One DERP connection to ``url`` (``http://`` or ``https://host[:port]/derp``)."""

    def __init__(
        self,
        private: NodePrivate,
        url: str,
        *,
        ssl: ssl_module.SSLContext | None = None,
        server_name: str | None = None,
        info: ClientInfo | None = None,
        rand: Callable[[int], bytes] = os.urandom,
        connect_timeout: float = CONNECT_TIMEOUT,
        read_timeout: float = READ_TIMEOUT,
        host_addr: str | None = None,
        dial_timeout: float | None = None,
    ) -> None:
        u = urlsplit(url)
        if u.scheme not in ("http", "https", "ws", "wss") or not u.hostname:
            raise ValueError(f"bad DERP URL {url!r}")
        self.websocket = u.scheme in ("ws", "wss")
        tls = u.scheme in ("https", "wss")
        self.url = url
        self.host = u.hostname
        self.dial_host = host_addr or u.hostname
        self.port = u.port or (443 if tls else 80)
        self.path = u.path or "/derp"
        self.ssl = ssl if ssl is not None else (True if tls else None)
        self.server_name = server_name
        self.session = ClientSession(private, rand, info=info)
        self.connect_timeout = connect_timeout
        self.dial_timeout = dial_timeout
        self.read_timeout = read_timeout
        self.server_key: NodePublic | None = None
        self.dropped = 0
        self._stream: RawStream | None = None
        self._ws: WebSocketStream | None = None
        self._pings: dict[bytes, asyncio.Future[None]] = {}
        self._rand = rand
        self._flush_scheduled = False
        self._pending_bytes = 0

    async def connect(self) -> None:
        """Dial, upgrade and log in; raises OSError, TimeoutError or a DERPError."""
        try:
            await self._connect()
        except BaseException:
            await self.close()
            raise

    async def _connect(self) -> None:
        async with asyncio.timeout(self.connect_timeout):
            tls: ssl_module.SSLContext | None = None
            if isinstance(self.ssl, ssl_module.SSLContext):
                tls = self.ssl
            elif self.ssl:
                tls = httpclient.tls_context()
            host = self.host if ":" not in self.host else f"[{self.host}]"
            async with asyncio.timeout(self.dial_timeout):
                conn = await httpclient.connect(
                    self.dial_host, self.port, tls=tls, authority=host,
                    server_hostname=self.server_name or self.host, max_head=MAX_RESPONSE_HEAD,
                )  # fmt: skip
            if self.websocket:
                headers, want_accept = client_handshake_headers(self._rand(16))
            else:
                headers = [("Upgrade", "DERP"), ("Connection", "Upgrade")]
            headers.append(("User-Agent", "meshscale"))
            try:
                up = await conn.upgrade("GET", self.path, headers, max_body=MAX_REFUSAL_BODY)
            except httpclient.UpgradeRefused as exc:
                await conn.close()
                raise HandshakeError(f"DERP upgrade refused: {exc.response.status}") from exc
            except BaseException as exc:
                await conn.close()
                if isinstance(exc, httpclient.HTTPClientError):
                    raise HandshakeError("bad HTTP response to the DERP upgrade") from exc
                raise
            self._stream = up.stream
            if self.websocket:
                if up.response.headers.get("sec-websocket-accept") != want_accept:
                    raise HandshakeError("bad Sec-WebSocket-Accept")
                self._ws = WebSocketStream(up.stream, ConnectionType.CLIENT)
            while True:
                ev = await self._next_event()
                if isinstance(ev, Connected):
                    self.server_key = ev.server_key
                    return

    async def _next_event(self) -> ClientEvent:
        source = self._ws or self._stream
        assert source is not None
        while True:
            ev = self.session.next_event()
            if ev is not None:
                return ev
            async with asyncio.timeout(self.read_timeout):
                data = await source.read(READ_CHUNK)
            if not data:
                raise ConnectionError("DERP server closed the connection")
            self.session.receive_data(data)
            self._flush()

    async def recv(self) -> ClientEvent:
        """The next event (packet, PeerGone, ...); raises on a dead or broken connection."""
        while True:
            ev = await self._next_event()
            if isinstance(ev, F.Pong):
                fut = self._pings.pop(ev.data, None)
                if fut is not None and not fut.done():
                    fut.set_result(None)
                    continue
            return ev

    async def recv_many(self) -> list[ClientEvent]:
        """Every event available now (at least one): one await per socket read, not per packet."""
        first = await self.recv()
        out = [first]
        while (ev := self.session.next_event()) is not None:
            if isinstance(ev, F.Pong):
                fut = self._pings.pop(ev.data, None)
                if fut is not None and not fut.done():
                    fut.set_result(None)
                    continue
            out.append(ev)
        return out

    def _flush(self) -> None:
        self._pending_bytes = 0
        out = self.session.data_to_send()
        if out and self._stream is not None:
            (self._ws or self._stream).write(out)

    def _flush_soon(self) -> None:
        # Coalesce the frames queued in one event-loop turn into one write (one syscall).
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._scheduled_flush)

    def _scheduled_flush(self) -> None:
        self._flush_scheduled = False
        w = self._stream
        if w is not None and not w.is_closing():
            self._flush()

    def send(self, dst: NodePublic | bytes, packet: bytes) -> bool:
        """Queue a packet; False (counted in ``dropped``) if the socket is backed up."""
        w = self._stream
        if w is None or w.is_closing():
            self.dropped += 1
            return False
        if w.transport.get_write_buffer_size() + self._pending_bytes > MAX_WRITE_BUFFER:
            self.dropped += 1
            return False
        self.session.send_packet(dst, packet)
        self._pending_bytes += F.FRAME_HEADER_LEN + F.KEY_LEN + len(packet)
        self._flush_soon()
        return True

    @property
    def transport(self) -> asyncio.WriteTransport | None:
        return self._stream.transport if self._stream is not None else None

    def abort(self) -> None:
        if self._stream is not None:
            self._stream.abort()

    def write_raw(self, parts: list[bytes | memoryview]) -> None:
        """Write pre-encoded frames (the relay's mesh forwarder queue)."""
        if self._ws is not None:
            self._ws.writelines(parts)
        elif self._stream is not None:
            self._stream.writelines(parts)

    async def drain(self) -> None:
        if self._stream is not None:
            self._flush()
            await self._stream.drain()

    def note_preferred(self, preferred: bool) -> None:
        self.session.note_preferred(preferred)
        self._flush()

    def watch_conns(self) -> None:
        self.session.watch_conns()
        self._flush()

    async def ping(self, wait: float = 5.0) -> float:
        """Round-trip time in seconds of a Ping (needs recv() running elsewhere)."""
        data = self._rand(8)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._pings[data] = fut
        start = loop.time()
        self.session.ping(data)
        self._flush()
        try:
            async with asyncio.timeout(wait):
                await fut
        finally:
            self._pings.pop(data, None)
        return loop.time() - start

    async def close(self) -> None:
        self.session.close()
        w, self._stream = self._stream, None
        if w is not None:
            w.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(w.wait_closed(), 1.0)

    @property
    def connected(self) -> bool:
        return self.session.connected and self._stream is not None
