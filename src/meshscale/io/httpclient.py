"""The project's HTTP/1.1 client: h11 over asyncio streams (TCP, TLS or a unix socket).

One request (the common case)::

    resp = await request("GET", "https://ctl.example.com/key?v=130", max_body=64 * 1024)
    resp.status, resp.reason, resp.headers.get("content-type"), resp.body, resp.json()

    resp = await request("POST", "http://local-meshscaled.sock/localapi/v0/start",
                         unix_socket="/var/run/meshscale/meshscaled.sock",
                         headers=[("Content-Type", "application/json")], body=b"{}")

    resp = request_sync(...)          # the same, for synchronous callers (the CLIs)

A connection, for an upgrade or an address that differs from the name (DERP, ts2021)::

    conn = await connect("192.0.2.1", 443, tls=tls_context(), server_hostname="derp.example",
                         authority="derp.example")
    up = await conn.upgrade("GET", "/derp", [("Upgrade", "DERP"), ("Connection", "Upgrade")])
    up.response.status == 101
    await up.stream.read()            # io.stream.RawStream: bytes h11 had read come first

``https://`` URLs are verified against the system trust store (honouring SSL_CERT_FILE)
unless ``verify=False``. A response body is read whole, chunked or by Content-Length (h11
decides), and bounded by ``max_body``; the head by ``max_head``.

Errors::

    HTTPClientError
     ├── LocalProtocolError   a request HTTP cannot carry: bad URL, CR/LF in a header (ValueError)
     ├── RemoteProtocolError  the server's bytes are not an HTTP/1.1 response, or it closed early
     │    └── ResponseTooLarge  the head or body is over its bound
     └── UpgradeRefused       an upgrade answered with a final status (``.response``)

Transport failures stay what asyncio raises: OSError (ConnectionRefusedError,
FileNotFoundError for a missing unix socket, ssl.SSLError) and TimeoutError for ``time_limit``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import socket
import ssl as ssl_module
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar
from urllib.parse import urlsplit

import h11

from . import netmark
from .http import Headers
from .stream import READ_CHUNK, RawStream

_P = ParamSpec("_P")
_T = TypeVar("_T")

# Bounds; each names the attack it stops.
MAX_HEAD_BYTES = 16 * 1024  # bytes of response head: a hostile server's endless headers
MAX_BODY_BYTES = 1 << 20  # bytes of response body by default: a hostile server's endless body
TIMEOUT = 30.0  # seconds for a whole request() by default: a server that never answers

# Methods that carry a body by convention get Content-Length: 0 when they have none, as
# http.client and Go's net/http send; some servers refuse a bodiless POST otherwise (411).
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


class HTTPClientError(Exception):
    """Base of this module's errors; see the module docstring for the tree."""


class LocalProtocolError(HTTPClientError, ValueError):
    """We were asked to send something HTTP/1.1 cannot carry."""


class RemoteProtocolError(HTTPClientError):
    """The server's answer is not a valid HTTP/1.1 response."""


class ResponseTooLarge(RemoteProtocolError):
    """The response head or body is over its bound."""


class UpgradeRefused(HTTPClientError):
    """An upgrade request got a final response instead of 101 Switching Protocols."""

    def __init__(self, response: Response) -> None:
        super().__init__(f"upgrade refused: HTTP {response.status} {response.reason}".rstrip())
        self.response = response


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    reason: str
    headers: Headers
    body: bytes = b""
    http_version: str = "1.1"

    def json(self) -> Any:
        """The body as JSON; ValueError if it is not."""
        return json.loads(self.body)


@dataclass(frozen=True, slots=True)
class Upgraded:
    """A 101 response and the connection, now a raw byte stream."""

    response: Response
    stream: RawStream


def tls_context(verify: bool = True) -> ssl_module.SSLContext:
    """A client TLS context: the system trust store (and SSL_CERT_FILE), or no checks at all
    (for protocols that authenticate the server themselves, as ts2021 does with Noise)."""
    ctx = ssl_module.create_default_context()
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl_module.CERT_NONE
    return ctx


def host_header(host: str, port: int, default_port: int) -> str:
    """The Host header for host:port (brackets around IPv6, no default port)."""
    name = f"[{host}]" if ":" in host else host
    return name if port == default_port else f"{name}:{port}"


class HTTPConnection:
    """One HTTP/1.1 connection driven by h11: ``request`` (repeatable while the server keeps
    the connection alive) or ``upgrade`` (which hands the connection over)."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        authority: str,
        *,
        max_head: int = MAX_HEAD_BYTES,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self.authority = authority
        self.max_head = max_head
        self._h = h11.Connection(h11.CLIENT, max_incomplete_event_size=max_head)

    async def __aenter__(self) -> HTTPConnection:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def request(
        self,
        method: str,
        target: str,
        headers: Iterable[tuple[str, str]] = (),
        body: bytes = b"",
        *,
        max_body: int = MAX_BODY_BYTES,
    ) -> Response:
        """Send one request and read its whole response (bounded by ``max_body``)."""
        await self._send(method, target, headers, body)
        head = await self._receive_head()
        if isinstance(head, h11.InformationalResponse):  # 101 without our proposal
            raise RemoteProtocolError("unexpected 101 Switching Protocols")
        resp = await self._receive_body(head, max_body, method == "HEAD")
        if self._h.our_state is h11.DONE and self._h.their_state is h11.DONE:
            self._h.start_next_cycle()
        return resp

    async def upgrade(
        self,
        method: str,
        target: str,
        headers: Iterable[tuple[str, str]],
        body: bytes = b"",
        *,
        max_body: int = MAX_BODY_BYTES,
    ) -> Upgraded:
        """Send a request with an ``Upgrade`` header; on 101 the connection becomes the
        returned stream. Any other answer raises UpgradeRefused (its body bounded)."""
        await self._send(method, target, headers, body)
        head = await self._receive_head()
        if isinstance(head, h11.Response):
            raise UpgradeRefused(await self._receive_body(head, max_body, method == "HEAD"))
        data, _closed = self._h.trailing_data
        stream = RawStream(self._reader, self._writer, bytes(data))
        return Upgraded(_response(head, b""), stream)

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._writer.wait_closed(), 1.0)

    # ---- internals ----

    async def _send(
        self, method: str, target: str, headers: Iterable[tuple[str, str]], body: bytes
    ) -> None:
        hdrs = list(headers)
        names = {k.lower() for k, _ in hdrs}
        if "host" not in names:
            hdrs.insert(0, ("Host", self.authority))
        framed = "content-length" in names or "transfer-encoding" in names
        if not framed and (body or method.upper() in _BODY_METHODS):
            hdrs.append(("Content-Length", str(len(body))))
        try:
            out = [self._h.send(h11.Request(method=method, target=target, headers=hdrs))]
            if body:
                out.append(self._h.send(h11.Data(data=body)))
            out.append(self._h.send(h11.EndOfMessage()))
        except h11.LocalProtocolError as exc:
            raise LocalProtocolError(f"cannot send {method} {target[:60]!r}: {exc}") from exc
        self._writer.writelines([b for b in out if b])
        await self._writer.drain()

    async def _next_event(self) -> Any:
        while True:
            try:
                ev = self._h.next_event()
            except h11.RemoteProtocolError as exc:
                raise RemoteProtocolError(f"bad HTTP response: {exc}") from exc
            if ev is h11.NEED_DATA:
                self._h.receive_data(await self._reader.read(READ_CHUNK))
                continue
            return ev

    async def _receive_head(self) -> h11.Response | h11.InformationalResponse:
        while True:
            ev = await self._next_event()
            if isinstance(ev, h11.InformationalResponse):
                if ev.status_code == 101:
                    self._check_head(ev)
                    return ev
                continue  # 100 Continue and friends carry nothing for us
            if isinstance(ev, h11.Response):
                self._check_head(ev)
                return ev
            raise RemoteProtocolError("connection closed before a response")

    def _check_head(self, ev: h11.Response | h11.InformationalResponse) -> None:
        # h11 bounds only incomplete heads; a complete one that came in one read needs the
        # same bound.
        size = len(ev.reason) + sum(len(k) + len(v) + 4 for k, v in ev.headers)
        if size > self.max_head:
            raise ResponseTooLarge(f"response head of {size} bytes")

    async def _receive_body(self, head: h11.Response, max_body: int, is_head: bool) -> Response:
        length = next((v for k, v in head.headers if k == b"content-length"), None)
        if length is not None and not is_head and int(length) > max_body:  # h11 checked digits
            raise ResponseTooLarge(f"response body of {int(length)} bytes")
        chunks: list[bytes] = []
        size = 0
        while True:
            ev = await self._next_event()
            if isinstance(ev, h11.Data):
                size += len(ev.data)
                if size > max_body:
                    raise ResponseTooLarge(f"response body over {max_body} bytes")
                chunks.append(bytes(ev.data))
            elif isinstance(ev, h11.EndOfMessage):
                return _response(head, b"".join(chunks))
            else:
                raise RemoteProtocolError("connection closed mid-response")


def _response(ev: h11.Response | h11.InformationalResponse, body: bytes) -> Response:
    return Response(
        status=ev.status_code,
        reason=ev.reason.decode("latin-1"),
        headers=Headers((k.decode("latin-1"), v.decode("latin-1")) for k, v in ev.headers),
        body=body,
        http_version=ev.http_version.decode("ascii", "replace"),
    )


async def connect(
    host: str,
    port: int,
    *,
    tls: ssl_module.SSLContext | None = None,
    server_hostname: str | None = None,
    authority: str | None = None,
    max_head: int = MAX_HEAD_BYTES,
    local_addr: str | None = None,
) -> HTTPConnection:
    """Dial host:port (over TLS with ``tls``, SNI ``server_hostname`` or host). ``authority``
    is the default Host header (host[:port] when not given); ``local_addr`` the source
    address to bind (tests and benchmarks: many clients from many loopback addresses)."""
    sni = (server_hostname or host) if tls is not None else None
    if local_addr is not None:
        reader, writer = await asyncio.open_connection(
            host, port, ssl=tls, server_hostname=sni, limit=READ_CHUNK,
            local_addr=(local_addr, 0),
        )  # fmt: skip
    elif netmark.socket_mark():
        sock = await _marked_socket(host, port)
        reader, writer = await asyncio.open_connection(
            sock=sock, ssl=tls, server_hostname=sni, limit=READ_CHUNK
        )
    else:
        reader, writer = await asyncio.open_connection(
            host, port, ssl=tls, server_hostname=sni, limit=READ_CHUNK
        )
    default = 443 if tls is not None else 80
    return HTTPConnection(
        reader, writer, authority or host_header(host, port, default), max_head=max_head
    )


async def _marked_socket(host: str, port: int) -> socket.socket:
    """A TCP socket carrying the process mark (io.netmark), connected to host:port; tries
    each address in turn, as open_connection does."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    last: OSError | None = None
    for family, type_, proto, _, addr in infos:
        sock = socket.socket(family, type_, proto)
        try:
            sock.setblocking(False)
            netmark.apply(sock)
            await loop.sock_connect(sock, addr)
            return sock
        except OSError as exc:
            sock.close()
            last = exc
        except BaseException:
            sock.close()
            raise
    raise last or OSError(f"cannot resolve {host}")


async def connect_unix(
    path: str, *, authority: str = "localhost", max_head: int = MAX_HEAD_BYTES
) -> HTTPConnection:
    """Dial a unix socket; FileNotFoundError / ConnectionRefusedError / PermissionError when
    nothing (or nobody we may talk to) listens there."""
    reader, writer = await asyncio.open_unix_connection(path, limit=READ_CHUNK)
    return HTTPConnection(reader, writer, authority, max_head=max_head)


async def open_url(
    url: str,
    *,
    unix_socket: str | None = None,
    tls: ssl_module.SSLContext | None = None,
    verify: bool = True,
    max_head: int = MAX_HEAD_BYTES,
) -> tuple[HTTPConnection, str]:
    """A connection for ``url`` and the request target (path and query) to send on it.

    With ``unix_socket`` the URL's host is only the Host header. ``tls`` overrides the
    context an ``https://`` URL gets (``tls_context(verify)``).
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise LocalProtocolError(f"URL must be http(s)://host[:port][/path], not {url[:80]!r}")
    try:
        port = parts.port
    except ValueError as exc:
        raise LocalProtocolError(f"bad port in URL {url[:80]!r}") from exc
    default = 443 if parts.scheme == "https" else 80
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    host = host_header(parts.hostname, port or default, default)
    if unix_socket is not None:
        return await connect_unix(unix_socket, authority=host, max_head=max_head), target
    if parts.scheme == "https" and tls is None:
        tls = tls_context(verify)
    conn = await connect(
        parts.hostname,
        port or default,
        tls=tls if parts.scheme == "https" else None,
        authority=host,
        max_head=max_head,
    )
    return conn, target


async def request(
    method: str,
    url: str,
    *,
    headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
    unix_socket: str | None = None,
    tls: ssl_module.SSLContext | None = None,
    verify: bool = True,
    max_body: int = MAX_BODY_BYTES,
    time_limit: float | None = TIMEOUT,
) -> Response:
    """One request on a fresh connection, closed afterwards; ``time_limit`` (seconds) covers
    it all: dial, TLS, request and response."""
    async with asyncio.timeout(time_limit):
        conn, target = await open_url(url, unix_socket=unix_socket, tls=tls, verify=verify)
        try:
            hdrs = [*headers, ("Connection", "close")]
            return await conn.request(method, target, hdrs, body, max_body=max_body)
        finally:
            await conn.close()


def _blocking(fn: Callable[_P, Coroutine[Any, Any, _T]]) -> Callable[_P, _T]:
    @functools.wraps(fn)
    def run(*args: _P.args, **kwargs: _P.kwargs) -> _T:
        return asyncio.run(fn(*args, **kwargs))

    return run


request_sync = _blocking(request)
request_sync.__doc__ = """``request`` for synchronous callers (the CLIs), same arguments: it runs on
a private event loop, so not from inside a running one (RuntimeError)."""
