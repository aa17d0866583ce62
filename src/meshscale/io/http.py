"""A tiny asyncio HTTP/1.1 server on h11, shared by the DERP relay and the control server.

Usage::

    router = Router()
    router.add("GET", "/key", key_handler)                # exact path
    router.add_prefix("GET", "/api/v1/", api_handler)     # longest prefix wins
    router.add_upgrade("/ts2021", ts2021_handler)         # HTTP Upgrade (101) endpoints
    server = HTTPServer(router)
    await server.start("127.0.0.1", 8080, ssl=None)       # -> Listener (.sockets)
    await server.start_unix("/run/x.sock")                # unix socket listener
    ...
    await server.close()

Ordinary handlers are ``async def handler(req: Request) -> Response``. ``Request`` carries
``method``, ``path`` (without the query), ``query`` (dict, last value wins), ``query_string``,
``headers`` (case-insensitive ``get``), ``body`` (bounded by ``max_body``), ``client`` (peer
address), ``tls`` and, on a unix socket, ``peer_uid`` (the connecting process's uid from
SO_PEERCRED: the kernel's word, never the request's). ``Response(status, body, headers,
content_type)``; a body may also be an async iterable of bytes (sent chunked).

Upgrade handlers are ``async def handler(req: Request, stream: UpgradeStream) -> Response | None``.
The handler may refuse by returning a Response before touching the stream (e.g. 426). Otherwise
it calls ``await stream.accept(headers)`` to write ``101 Switching Protocols`` (or
``accept(write_response=False)`` for DERP fast start); reading first accepts implicitly
with no extra headers. After that ``stream`` is the raw byte stream (io.stream.RawStream):
``await read(n)`` (b"" at EOF; returns the bytes h11 had already buffered first),
``await readexactly(n)``, ``write(b)``, ``await drain()``, ``close()``, ``abort()``,
``get_extra_info(k)``.
The handler owns the connection until it returns; the server then closes it.

The server's own answers (400 for a malformed request, 404, 405, 408, 413, 431, a bare 500)
come from ``error_response(status, text)``: plain text unless the application gives its own
(the local API answers JSON).

Hardening (each bound names the attack it stops): header block size (memory exhaustion by
endless headers), body size (same, via bodies), a deadline for a whole request once its first
byte arrived (slowloris), an idle keep-alive timeout (idle socket hoarding), a TLS handshake
timeout, and a write deadline (clients that never read). Malformed requests get a clean 400
and a close; a handler exception gets a bare 500 and is logged here, never sent to the client.

``close(grace)`` stops listening, closes idle keep-alive connections, lets in-flight ordinary
requests finish for up to ``grace`` seconds and cancels upgraded (long-lived) connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl as ssl_module
import struct
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote

import h11

from .accept import ACCEPT_BATCH as ACCEPT_BATCH  # re-exported: the bounds live there
from .accept import MAX_HELD as MAX_HELD
from .accept import AcceptFilter, Acceptor, bind
from .accept import Listener as Listener
from .stream import READ_CHUNK, RawStream

log = logging.getLogger(__name__)

# Bounds; each names the attack it stops.
MAX_HEADER_BYTES = 16 * 1024  # bytes: endless header lines exhausting memory
MAX_BODY_BYTES = 1024 * 1024  # bytes: huge request bodies exhausting memory
REQUEST_TIMEOUT = 10.0  # seconds from a request's first byte to its end: slowloris
KEEPALIVE_TIMEOUT = 60.0  # seconds idle between requests: socket hoarding
TLS_HANDSHAKE_TIMEOUT = 10.0  # seconds: half-open TLS handshakes
WRITE_TIMEOUT = 30.0  # seconds a response write may block: clients that never read
LISTEN_BACKLOG = 1024  # pending connections the kernel queues (capped by net.core.somaxconn)


class Headers:
    """Request headers: ordered, names lower-cased, values decoded as latin-1."""

    __slots__ = ("_items",)

    def __init__(self, items: Iterable[tuple[str, str]]) -> None:
        self._items = [(k.lower(), v) for k, v in items]

    def get(self, name: str, default: str | None = None) -> str | None:
        name = name.lower()
        for k, v in self._items:
            if k == name:
                return v
        return default

    def get_all(self, name: str) -> list[str]:
        name = name.lower()
        return [v for k, v in self._items if k == name]

    def items(self) -> list[tuple[str, str]]:
        return list(self._items)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def __repr__(self) -> str:
        return f"Headers({self._items!r})"


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str
    query_string: str
    query: dict[str, str]
    headers: Headers
    body: bytes = b""
    client: tuple[str, int] | None = None
    tls: bool = False
    http_version: str = "1.1"
    peer_uid: int | None = None
    # The path as sent, still percent-encoded: for routers that split it into segments
    # before decoding (so an encoded "/" or "%" inside a segment is decoded exactly once).
    raw_path: str = ""


def peer_uid(sock: Any) -> int | None:
    """The uid of the process at the other end of a unix socket (SO_PEERCRED), else None.

    ``sock`` is a socket or asyncio's TransportSocket (``get_extra_info("socket")``).
    """
    if sock is None or sock.family != socket.AF_UNIX:
        return None
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return None
    _pid, uid, _gid = struct.unpack("3i", raw)
    return int(uid)


@dataclass(slots=True)
class Response:
    status: int = 200
    body: bytes | AsyncIterable[bytes] = b""
    headers: list[tuple[str, str]] = field(default_factory=list)
    content_type: str | None = None

    @classmethod
    def text(cls, status: int, text: str, headers: list[tuple[str, str]] | None = None) -> Response:
        return cls(status, text.encode(), headers or [], "text/plain; charset=utf-8")

    @classmethod
    def json_bytes(cls, body: bytes, status: int = 200) -> Response:
        return cls(status, body, [], "application/json")


class UpgradeStream(RawStream):
    """The raw connection behind an Upgrade request; see the module docstring."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        buffered: bytes,
        upgrade: str,
    ) -> None:
        super().__init__(reader, writer, buffered)
        self._upgrade = upgrade
        self.accepted = False

    async def accept(
        self, headers: Iterable[tuple[str, str]] = (), *, write_response: bool = True
    ) -> None:
        """Switch protocols: write the 101 (unless ``write_response`` is False)."""
        if self.accepted:
            return
        self.accepted = True
        if not write_response:
            return
        lines = ["HTTP/1.1 101 Switching Protocols"]
        names = set()
        for k, v in headers:
            _check_header(k, v)
            names.add(k.lower())
            lines.append(f"{k}: {v}")
        if "upgrade" not in names and self._upgrade:
            lines.insert(1, f"Upgrade: {self._upgrade}")
        if "connection" not in names:
            lines.insert(2 if "upgrade" not in names else 1, "Connection: Upgrade")
        self._writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        await self.drain()

    async def read(self, n: int = READ_CHUNK) -> bytes:
        """Up to n bytes; b"" at EOF. Accepts first (no extra headers) if not yet done."""
        if not self.accepted:
            await self.accept()
        return await super().read(n)

    async def readexactly(self, n: int) -> bytes:
        """Exactly n bytes; raises asyncio.IncompleteReadError at EOF."""
        if not self.accepted:
            await self.accept()
        return await super().readexactly(n)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self.accepted:
            raise RuntimeError("UpgradeStream.write before accept()")
        self._writer.write(data)

    def writelines(self, data: Iterable[bytes | bytearray | memoryview]) -> None:
        if not self.accepted:
            raise RuntimeError("UpgradeStream.writelines before accept()")
        self._writer.writelines(data)


Handler = Callable[[Request], Awaitable[Response]]
UpgradeHandler = Callable[[Request, UpgradeStream], Awaitable[Response | None]]


class Router:
    """Route table: exact (method, path), longest (method, prefix), and upgrade paths.

    Method ``"*"`` matches any method. A path that exists under another method gets 405.
    """

    def __init__(self) -> None:
        self._exact: dict[tuple[str, str], Handler] = {}
        self._prefix: list[tuple[str, str, Handler]] = []
        self._upgrade: dict[str, UpgradeHandler] = {}

    def add(self, method: str, path: str, handler: Handler) -> None:
        self._exact[(method.upper(), path)] = handler

    def add_prefix(self, method: str, prefix: str, handler: Handler) -> None:
        self._prefix.append((method.upper(), prefix, handler))
        self._prefix.sort(key=lambda t: len(t[1]), reverse=True)

    def add_upgrade(self, path: str, handler: UpgradeHandler) -> None:
        """Requests to ``path`` (any method, upgrade header or not) go to ``handler``."""
        self._upgrade[path] = handler

    def upgrade_handler(self, path: str) -> UpgradeHandler | None:
        return self._upgrade.get(path)

    def resolve(self, method: str, path: str) -> Handler | int:
        """A handler, or the status to answer with (404 or 405)."""
        h = self._exact.get((method, path)) or self._exact.get(("*", path))
        if h is None and method == "HEAD":
            h = self._exact.get(("GET", path))
        if h is not None:
            return h
        path_known = any(p == path for (_, p) in self._exact)
        for m, prefix, ph in self._prefix:
            if path.startswith(prefix):
                if m in (method, "*") or (method == "HEAD" and m == "GET"):
                    return ph
                path_known = True
        return 405 if path_known else 404


def _text_error(status: int, text: str) -> Response:
    return Response.text(status, text + "\n")


def _check_header(name: str, value: str) -> None:
    if any(c in name + value for c in "\r\n\0") or not name:
        raise ValueError(f"invalid response header {name!r}")


class _Conn:
    __slots__ = ("idle", "task", "upgraded")

    def __init__(self, task: asyncio.Task[Any] | None) -> None:
        self.task = task
        self.idle = True
        self.upgraded = False


class HTTPServer:
    """HTTP/1.1 over asyncio streams; see the module docstring for the API and bounds."""

    def __init__(
        self,
        router: Router,
        *,
        max_header_bytes: int = MAX_HEADER_BYTES,
        max_body: int = MAX_BODY_BYTES,
        request_timeout: float = REQUEST_TIMEOUT,
        keepalive_timeout: float = KEEPALIVE_TIMEOUT,
        write_timeout: float = WRITE_TIMEOUT,
        server_header: str | None = None,
        error_response: Callable[[int, str], Response] | None = None,
        accept_filter: AcceptFilter | None = None,
    ) -> None:
        self.router = router
        # Called with the peer's address on a TCP listener, before anything is read: None
        # serves it; a number refuses it unread (the cheapest refusal, for a server shedding
        # load): the connection is held that many seconds, then reset, so a client that
        # retries at once cannot make the server refuse faster than its own concurrency
        # allows. At most MAX_HELD are held; the rest are reset at once (io/accept.py).
        self.accept_filter = accept_filter
        self._acceptor = Acceptor(self._start_conn, accept_filter)
        self._tls: dict[socket.socket, ssl_module.SSLContext | None] = {}
        self._starting: set[asyncio.Task[None]] = set()
        self.error_response = error_response or _text_error
        self.max_header_bytes = max_header_bytes
        self.max_body = max_body
        self.request_timeout = request_timeout
        self.keepalive_timeout = keepalive_timeout
        self.write_timeout = write_timeout
        self.server_header = server_header
        self._servers: list[asyncio.Server] = []
        self._conns: set[_Conn] = set()
        self._closing = False

    async def start(
        self, host: str | None, port: int, ssl: ssl_module.SSLContext | None = None
    ) -> Listener:
        """Listen on host:port (host None = all addresses); may be called for several ports."""
        socks = await bind(host, port, LISTEN_BACKLOG)
        for sock in socks:
            self._tls[sock] = ssl
            self._acceptor.listen(sock)
        return Listener(socks)

    def _start_conn(self, sock: socket.socket, listener: socket.socket) -> None:
        """The acceptor's hand-over: a transport and _on_connect for an admitted socket."""
        task = asyncio.get_running_loop().create_task(
            self._connect_accepted(sock, self._tls.get(listener))
        )
        self._starting.add(task)
        task.add_done_callback(self._starting.discard)

    async def _connect_accepted(
        self, sock: socket.socket, ssl: ssl_module.SSLContext | None
    ) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=READ_CHUNK, loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, self._on_connect, loop=loop)
        try:
            await loop.connect_accepted_socket(
                lambda: protocol,
                sock,
                ssl=ssl,
                ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT if ssl is not None else None,
            )
        except (OSError, ssl_module.SSLError, TimeoutError, asyncio.CancelledError):
            sock.close()  # a failed TLS handshake, or a peer already gone

    @property
    def refused_at_accept(self) -> int:
        """TCP connections refused by accept_filter."""
        return self._acceptor.refused

    @property
    def held(self) -> int:
        """Refused connections being held before their reset."""
        return self._acceptor.held

    async def start_unix(self, path: str) -> asyncio.Server:
        """Listen on a unix socket (the caller sets its permissions)."""
        srv = await asyncio.start_unix_server(self._on_connect, path, limit=READ_CHUNK)
        self._servers.append(srv)
        return srv

    @property
    def connections(self) -> int:
        return len(self._conns)

    async def close(self, grace: float = 5.0) -> None:
        """Stop listening and shut connections down (see the module docstring)."""
        self._closing = True
        self._acceptor.close()
        for t in list(self._starting):
            t.cancel()
        for srv in self._servers:
            srv.close()
        for c in list(self._conns):
            if (c.idle or c.upgraded) and c.task is not None:
                c.task.cancel()
        tasks = [c.task for c in self._conns if c.task is not None]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace)
            for t in pending:
                t.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1.0)
        for srv in self._servers:
            with contextlib.suppress(Exception):
                await srv.wait_closed()
        self._servers.clear()

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = _Conn(asyncio.current_task())
        self._conns.add(conn)
        try:
            upgrade = await self._serve(conn, reader, writer)
            if upgrade is not None:
                # _serve has returned, so its h11 state is garbage now: a long-lived upgraded
                # connection keeps only what the handler needs (the handler may even drop the
                # request: no frame of ours holds it while the handler runs).
                box = [upgrade]
                del upgrade
                await self._run_upgrade(conn, reader, writer, box)
        except TimeoutError:
            writer.transport.abort()  # a write deadline passed: the buffer will never drain
        except (asyncio.CancelledError, ConnectionError, ssl_module.SSLError):
            pass
        except Exception:
            log.exception("http: connection failed")
        finally:
            self._conns.discard(conn)
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1.0)

    async def _next_event(
        self, h: h11.Connection, reader: asyncio.StreamReader
    ) -> h11.Event | type[h11.PAUSED]:
        while True:
            ev = h.next_event()
            if ev is h11.NEED_DATA:
                h.receive_data(await reader.read(READ_CHUNK))
                continue
            return ev  # type: ignore[return-value]

    async def _serve(
        self, conn: _Conn, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> tuple[Request, UpgradeHandler, bytes] | None:
        """Serve ordinary requests; return (request, handler, buffered bytes) to upgrade."""
        h = h11.Connection(h11.SERVER, max_incomplete_event_size=self.max_header_bytes)
        peer = writer.get_extra_info("peername")
        client = (
            (str(peer[0]), int(peer[1])) if isinstance(peer, tuple) and len(peer) >= 2 else None
        )
        tls = writer.get_extra_info("sslcontext") is not None
        uid = peer_uid(writer.get_extra_info("socket"))
        while not self._closing:
            conn.idle = True
            try:
                # Idle keep-alive wait for the first byte of the next request.
                if not h.trailing_data[0]:
                    async with asyncio.timeout(self.keepalive_timeout):
                        first = await reader.read(READ_CHUNK)
                    h.receive_data(first)
                    if not first:
                        return None
                conn.idle = False
                async with asyncio.timeout(self.request_timeout):
                    ev = await self._next_event(h, reader)
                    if isinstance(ev, h11.ConnectionClosed):
                        return None
                    if not isinstance(ev, h11.Request):
                        raise h11.RemoteProtocolError("expected a request", 400)
                    req_ev = ev
                    if req_ev.http_version not in (b"1.0", b"1.1"):
                        raise h11.RemoteProtocolError("unsupported HTTP version", 505)
                    # h11 bounds only incomplete heads; a complete one arriving in one read
                    # needs the same bound.
                    head_size = len(req_ev.target) + sum(
                        len(k) + len(v) + 4 for k, v in req_ev.headers
                    )
                    if head_size > self.max_header_bytes:
                        raise h11.RemoteProtocolError("request header too large", 431)
                    path_raw, _, qs = req_ev.target.decode("latin-1").partition("?")
                    upgrade_handler = self.router.upgrade_handler(unquote(path_raw))
                    body = await self._read_body(h, reader, writer, req_ev)
            except TimeoutError:
                if not conn.idle:
                    await self._send_error(h, writer, 408, "request timeout")
                return None
            except h11.RemoteProtocolError as exc:
                await self._send_error(h, writer, exc.error_status_hint or 400, "bad request")
                return None
            except _BodyTooLarge:
                await self._send_error(h, writer, 413, "request body too large")
                return None
            req = Request(
                method=req_ev.method.decode("ascii", "replace").upper(),
                path=unquote(path_raw),
                query_string=qs,
                query=dict(parse_qsl(qs, keep_blank_values=True)),
                headers=Headers(
                    (k.decode("latin-1"), v.decode("latin-1")) for k, v in req_ev.headers
                ),
                body=body,
                client=client,
                tls=tls,
                http_version=req_ev.http_version.decode("ascii", "replace"),
                peer_uid=uid,
                raw_path=path_raw,
            )
            if upgrade_handler is not None:
                return req, upgrade_handler, h.trailing_data[0]
            handler = self.router.resolve(req.method, req.path)
            if isinstance(handler, int):
                resp = self.error_response(handler, "not found" if handler == 404 else "bad method")
            else:
                try:
                    resp = await handler(req)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("http: handler for %s %s failed", req.method, req.path)
                    resp = self.error_response(500, "internal server error")
            if not await self._send_response(h, writer, resp, req.method == "HEAD"):
                return None
            if h.our_state is h11.MUST_CLOSE or h.their_state is h11.MUST_CLOSE:
                return None
            try:
                h.start_next_cycle()
            except h11.LocalProtocolError:
                return None
        return None

    async def _read_body(
        self,
        h: h11.Connection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        req: h11.Request,
    ) -> bytes:
        for k, v in req.headers:
            if k == b"content-length" and v.isdigit() and int(v) > self.max_body:
                raise _BodyTooLarge
        chunks: list[bytes] = []
        size = 0
        if h.they_are_waiting_for_100_continue:  # curl sends Expect: 100-continue for big bodies
            writer.write(h.send(h11.InformationalResponse(status_code=100, headers=[])) or b"")
        while True:
            ev = await self._next_event(h, reader)
            if isinstance(ev, h11.Data):
                size += len(ev.data)
                if size > self.max_body:
                    raise _BodyTooLarge
                chunks.append(bytes(ev.data))
            elif isinstance(ev, h11.EndOfMessage) or ev is h11.PAUSED:
                return b"".join(chunks)
            elif isinstance(ev, h11.ConnectionClosed):
                raise h11.RemoteProtocolError("connection closed mid-body", 400)
            else:
                raise h11.RemoteProtocolError("unexpected event", 400)

    async def _run_upgrade(
        self,
        conn: _Conn,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        box: list[tuple[Request, UpgradeHandler, bytes]],
    ) -> None:
        req, handler, buffered = box.pop()
        conn.upgraded = True
        stream = UpgradeStream(reader, writer, buffered, req.headers.get("upgrade") or "")
        path, head = req.path, req.method == "HEAD"
        reqs = [req]
        del req, buffered
        try:
            resp = await handler(reqs.pop(), stream)
        except (asyncio.CancelledError, ConnectionError):
            raise
        except Exception:
            log.exception("http: upgrade handler for %s failed", path)
            resp = None if stream.accepted else self.error_response(500, "internal server error")
        if resp is not None and not stream.accepted:
            resp.headers = [*resp.headers, ("Connection", "close")]
            # A fresh h11 state that has just read a request of the same method.
            h = h11.Connection(h11.SERVER)
            method = "HEAD" if head else "GET"
            h.receive_data(f"{method} / HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            while h.next_event() is not h11.NEED_DATA and h.their_state is not h11.DONE:
                pass
            await self._send_response(h, writer, resp, head)

    async def _send_error(
        self, h: h11.Connection, writer: asyncio.StreamWriter, status: int, text: str
    ) -> None:
        if h.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        resp = self.error_response(status, text)
        resp.headers = [*resp.headers, ("Connection", "close")]
        with contextlib.suppress(Exception):
            await self._send_response(h, writer, resp, False)

    async def _send_response(
        self, h: h11.Connection, writer: asyncio.StreamWriter, resp: Response, head: bool
    ) -> bool:
        """Send resp; False if the connection must be dropped."""
        headers: list[tuple[str, str]] = []
        if self.server_header:
            headers.append(("Server", self.server_header))
        if resp.content_type is not None:
            headers.append(("Content-Type", resp.content_type))
        streaming = not isinstance(resp.body, bytes)
        if isinstance(resp.body, bytes):
            headers.append(("Content-Length", str(len(resp.body))))
        headers.extend(resp.headers)
        try:
            for k, v in headers:
                _check_header(k, v)
            out = [h.send(h11.Response(status_code=resp.status, headers=headers))]
        except (h11.LocalProtocolError, ValueError):
            log.exception("http: invalid response")
            if h.our_state is h11.SEND_RESPONSE:
                fallback = h11.Response(
                    status_code=500, headers=[("Content-Length", "0"), ("Connection", "close")]
                )
                out = [h.send(fallback), h.send(h11.EndOfMessage())]
                writer.writelines([b for b in out if b])
                await self._drain(writer)
            return False
        try:
            if isinstance(resp.body, bytes):
                if resp.body and not head:
                    out.append(h.send(h11.Data(data=resp.body)))
                out.append(h.send(h11.EndOfMessage()))
                writer.writelines([b for b in out if b])
                await self._drain(writer)
            else:
                writer.writelines([b for b in out if b])
                await self._drain(writer)
                if not head:
                    async for chunk in resp.body:
                        if chunk:
                            writer.write(h.send(h11.Data(data=chunk)) or b"")
                            await self._drain(writer)
                writer.write(h.send(h11.EndOfMessage()) or b"")
                await self._drain(writer)
        except h11.LocalProtocolError:
            log.exception("http: response body does not match its headers")
            return False
        return not streaming or h.our_state is h11.DONE

    async def _drain(self, writer: asyncio.StreamWriter) -> None:
        async with asyncio.timeout(self.write_timeout):
            await writer.drain()


class _BodyTooLarge(Exception):
    pass
