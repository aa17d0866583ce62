"""DERP client over asyncio: one connection (``DERPClient``), one region kept up with
reconnect and back-off (``RegionClient``), and home-region switching (``DERPRegions``).

The protocol lives in the sans-IO ``meshscale.derp.client.ClientSession``; this module only
dials, performs the HTTP upgrade (derp-disco-stun.md 1.1) and moves bytes.

``DERPClient.recv()`` must be running (in one task) for pongs and server pings to be handled;
``ping()`` awaits a pong that ``recv()`` consumes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import ssl as ssl_module
from collections.abc import Callable, Mapping, Sequence
from urllib.parse import urlsplit

from wsproto.connection import ConnectionType

from ..derp import frames as F
from ..derp.client import ClientEvent, ClientSession, Connected
from ..derp.errors import DERPError, HandshakeError
from ..derp.info import ClientInfo
from ..key import NodePrivate, NodePublic
from .websocket import WebSocketStream, client_handshake_headers

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 10.0  # seconds: dial + TLS + upgrade + login (1.1)
READ_TIMEOUT = F.CLIENT_READ_TIMEOUT  # seconds of server silence before giving up
MAX_RESPONSE_HEAD = 16 * 1024  # bytes of HTTP response head: a hostile server's endless headers
MAX_WRITE_BUFFER = 1 << 20  # bytes buffered in the transport before send() drops
BACKOFF_MAX = 5.0  # seconds
IDLE_REGION_TIMEOUT = 60.0  # seconds without writes before a non-home region is closed
NODE_DIAL_TIMEOUT = 1.5  # seconds per region node (TCP + TLS) when the region has others


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
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
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
            kw: dict[str, object] = {"limit": MAX_RESPONSE_HEAD + 64 * 1024}
            if self.ssl is not None:
                kw["ssl"] = self.ssl
                kw["server_hostname"] = self.server_name or self.host
            async with asyncio.timeout(self.dial_timeout):
                reader, writer = await asyncio.open_connection(self.dial_host, self.port, **kw)  # type: ignore[arg-type]
            self._reader, self._writer = reader, writer
            host = self.host if ":" not in self.host else f"[{self.host}]"
            if self.websocket:
                request, want_accept = client_handshake_headers(host, self.path)
                writer.write(request)
            else:
                writer.write(
                    f"GET {self.path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: DERP\r\n"
                    "Connection: Upgrade\r\nUser-Agent: meshscale\r\n\r\n".encode()
                )
            await writer.drain()
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.LimitOverrunError, asyncio.IncompleteReadError) as exc:
                raise HandshakeError("bad HTTP response to the DERP upgrade") from exc
            status = head.split(b"\r\n", 1)[0].split(b" ")
            if len(status) < 2 or status[1] != b"101":
                raise HandshakeError(f"DERP upgrade refused: {head[:80]!r}")
            if self.websocket:
                fields = {
                    k.strip().lower(): v.strip()
                    for k, _, v in (
                        ln.decode("latin-1").partition(":") for ln in head.split(b"\r\n")[1:]
                    )
                }
                if fields.get("sec-websocket-accept") != want_accept:
                    raise HandshakeError("bad Sec-WebSocket-Accept")
                self._ws = WebSocketStream(_TCPStream(reader, writer), ConnectionType.CLIENT)
            while True:
                ev = await self._next_event()
                if isinstance(ev, Connected):
                    self.server_key = ev.server_key
                    return

    async def _next_event(self) -> ClientEvent:
        assert self._reader is not None
        while True:
            ev = self.session.next_event()
            if ev is not None:
                return ev
            async with asyncio.timeout(self.read_timeout):
                if self._ws is not None:
                    data = await self._ws.read(64 * 1024)
                else:
                    data = await self._reader.read(64 * 1024)
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
        if out and self._writer is not None:
            if self._ws is not None:
                self._ws.write(out)
            else:
                self._writer.write(out)

    def _flush_soon(self) -> None:
        # Coalesce the frames queued in one event-loop turn into one write (one syscall).
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._scheduled_flush)

    def _scheduled_flush(self) -> None:
        self._flush_scheduled = False
        w = self._writer
        if w is not None and not w.is_closing():
            self._flush()

    def send(self, dst: NodePublic | bytes, packet: bytes) -> bool:
        """Queue a packet; False (counted in ``dropped``) if the socket is backed up."""
        w = self._writer
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
        return self._writer.transport if self._writer is not None else None

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.transport.abort()

    def write_raw(self, parts: list[bytes | memoryview]) -> None:
        """Write pre-encoded frames (the relay's mesh forwarder queue)."""
        if self._ws is not None:
            self._ws.writelines(parts)
        elif self._writer is not None:
            self._writer.writelines(parts)

    async def drain(self) -> None:
        if self._writer is not None:
            self._flush()
            await self._writer.drain()

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
        w, self._writer = self._writer, None
        if w is not None:
            w.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(w.wait_closed(), 1.0)

    @property
    def connected(self) -> bool:
        return self.session.connected and self._writer is not None


class _TCPStream:
    """asyncio streams as the byte-stream API WebSocketStream wraps."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def read(self, n: int = 64 * 1024) -> bytes:
        return await self.reader.read(n)

    def write(self, data: bytes) -> None:
        self.writer.write(data)

    def writelines(self, data: list[bytes | memoryview]) -> None:
        self.writer.writelines(data)

    async def drain(self) -> None:
        await self.writer.drain()

    def close(self) -> None:
        self.writer.close()

    def abort(self) -> None:
        self.writer.transport.abort()

    @property
    def transport(self) -> asyncio.WriteTransport:
        return self.writer.transport


def backoff_delay(failures: int, rng: random.Random) -> float:
    """min(n^2 x 10 ms, 5 s) times a factor in [0.5, 1.5), as the official client (1.7)."""
    return min(failures * failures * 0.010, BACKOFF_MAX) * (0.5 + rng.random())


class RegionClient:
    """Keeps one DERP connection to a region up, reconnecting with back-off, and reports its
    events. A region's nodes are tried in map order (1.1); each gets NODE_DIAL_TIMEOUT to
    answer when there is another to fall back to."""

    def __init__(
        self,
        private: NodePrivate,
        url: str | Sequence[str],
        on_event: Callable[[ClientEvent], None],
        *,
        ssl: ssl_module.SSLContext | None = None,
        server_name: str | None = None,
        preferred: bool = False,
        rng: random.Random | None = None,
    ) -> None:
        self.private = private
        self.urls = [url] if isinstance(url, str) else list(url)
        if not self.urls:
            raise ValueError("a region needs at least one DERP URL")
        self.on_event = on_event
        self.ssl = ssl
        self.server_name = server_name
        self.preferred = preferred
        self.client: DERPClient | None = None
        self.failures = 0
        self.connects = 0
        self.last_write = 0.0
        self._rng = rng or random.Random()
        self._task: asyncio.Task[None] | None = None
        self._up = asyncio.Event()

    @property
    def url(self) -> str:
        """The URL of the connected node (or of the first node)."""
        return self.client.url if self.client is not None else self.urls[0]

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"derp {self.urls[0]}")

    async def wait_connected(self) -> None:
        await self._up.wait()

    def set_preferred(self, preferred: bool) -> None:
        self.preferred = preferred
        if self.client is not None and self.client.connected:
            self.client.note_preferred(preferred)

    def send(self, dst: NodePublic | bytes, packet: bytes) -> bool:
        self.last_write = asyncio.get_running_loop().time()
        c = self.client
        return c is not None and c.connected and c.send(dst, packet)

    async def _connect_any(self) -> DERPClient:
        dial = NODE_DIAL_TIMEOUT if len(self.urls) > 1 else None
        last: Exception | None = None
        for url in self.urls:
            client = DERPClient(
                self.private, url, ssl=self.ssl, server_name=self.server_name, dial_timeout=dial
            )
            try:
                await client.connect()
                return client
            except (OSError, TimeoutError, DERPError, ValueError) as exc:
                log.debug("derp %s: %r", url, exc)
                last = exc
        assert last is not None
        raise last

    async def _run(self) -> None:
        while True:
            client: DERPClient | None = None
            try:
                client = await self._connect_any()
                self.client = client
                self.failures = 0
                self.connects += 1
                if self.preferred:
                    client.note_preferred(True)
                self._up.set()
                while True:
                    for ev in await client.recv_many():
                        self.on_event(ev)
            except asyncio.CancelledError:
                if client is not None:
                    await client.close()
                raise
            except Exception as exc:
                log.debug("derp %s: %r", self.url, exc)
            self._up.clear()
            self.client = None
            if client is not None:
                await client.close()
            self.failures += 1
            await asyncio.sleep(backoff_delay(self.failures, self._rng))

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self.client is not None:
            await self.client.close()
            self.client = None


class DERPRegions:
    """DERP connections by region: the home region is kept forever and told NotePreferred;
    others are opened on demand and closed after ``IDLE_REGION_TIMEOUT`` without writes.

    ``urls`` maps a region ID to its node URLs in map order (or one URL). Assigning a new
    mapping closes the connections of regions whose nodes changed or vanished (2.2); they
    reconnect on next use.
    """

    def __init__(
        self,
        private: NodePrivate,
        urls: Mapping[int, str | Sequence[str]],
        on_event: Callable[[int, ClientEvent], None],
        *,
        ssl: ssl_module.SSLContext | None = None,
    ) -> None:
        self.private = private
        self._urls: dict[int, list[str]] = {}
        self.on_event = on_event
        self.ssl = ssl
        self.home: int | None = None
        self.regions: dict[int, RegionClient] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self.urls = urls  # type: ignore[assignment]

    @property
    def urls(self) -> dict[int, list[str]]:
        return dict(self._urls)

    @urls.setter
    def urls(self, urls: Mapping[int, str | Sequence[str]]) -> None:
        new = {r: [u] if isinstance(u, str) else list(u) for r, u in urls.items()}
        changed = [r for r in self.regions if new.get(r) != self._urls.get(r)]
        self._urls = new
        for r in changed:
            rc = self.regions.pop(r)
            task = asyncio.get_running_loop().create_task(rc.close())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
            if r == self.home and r in new:
                self._region(r).set_preferred(True)

    def _region(self, region: int) -> RegionClient:
        rc = self.regions.get(region)
        if rc is None:
            url = self._urls[region]
            rc = RegionClient(self.private, url, lambda ev: self.on_event(region, ev), ssl=self.ssl)
            self.regions[region] = rc
            rc.start()
        return rc

    def set_home(self, region: int) -> RegionClient:
        """Switch home: NotePreferred(1) to the new home, NotePreferred(0) to the old."""
        if self.home is not None and self.home != region and self.home in self.regions:
            self.regions[self.home].set_preferred(False)
        self.home = region
        rc = self._region(region)
        rc.set_preferred(True)
        return rc

    def send(self, region: int, dst: NodePublic | bytes, packet: bytes) -> bool:
        return self._region(region).send(dst, packet)

    async def close_idle(self, now: float) -> list[int]:
        """Close non-home regions idle for IDLE_REGION_TIMEOUT; call every ~15 s."""
        idle = [
            r
            for r, rc in self.regions.items()
            if r != self.home and now - rc.last_write > IDLE_REGION_TIMEOUT
        ]
        for r in idle:
            await self.regions.pop(r).close()
        return idle

    async def close(self) -> None:
        for rc in list(self.regions.values()):
            await rc.close()
        self.regions.clear()
        if self._closing:
            await asyncio.wait(list(self._closing), timeout=2.0)
