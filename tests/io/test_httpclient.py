"""meshscale.io.httpclient: requests, bounds, TLS, unix sockets, upgrades, hostile servers."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from meshscale.io import httpclient
from meshscale.io.http import HTTPServer, Request, Response, Router, UpgradeStream
from meshscale.io.httpclient import (
    HTTPClientError,
    HTTPConnection,
    LocalProtocolError,
    RemoteProtocolError,
    ResponseTooLarge,
    UpgradeRefused,
)
from meshscale.testing.rawserver import canned_server


async def _echo(req: Request) -> Response:
    text = f"{req.method} {req.path} {req.query} {len(req.body)} host={req.headers.get('host')}"
    return Response.text(200, text, [("X-Seen-Length", req.headers.get("content-length") or "-")])


async def _stream(req: Request) -> Response:
    async def gen() -> AsyncIterator[bytes]:
        for i in range(int(req.query.get("n", "3"))):
            yield f"chunk{i};".encode()

    return Response(200, gen(), content_type="text/plain")


async def _big(req: Request) -> Response:
    return Response(200, b"x" * 5000)


async def _upgrade(req: Request, stream: UpgradeStream) -> Response | None:
    if (req.headers.get("upgrade") or "").lower() != "echo":
        return Response.text(426, "need upgrade")
    await stream.accept([("Echo-Version", "1")])
    stream.write(b"hello")  # in the same segment as the 101, usually
    while data := await stream.read(100):
        stream.write(data.upper())
        await stream.drain()
    return None


def _router() -> Router:
    r = Router()
    for method in ("GET", "POST", "PUT"):
        r.add(method, "/echo", _echo)
    r.add("GET", "/stream", _stream)
    r.add("GET", "/big", _big)
    r.add_upgrade("/up", _upgrade)
    return r


def run(body: Callable[[str], Awaitable[Any]]) -> Any:
    """body(base_url) against an io.http server on loopback."""

    async def main() -> Any:
        server = HTTPServer(_router())
        srv = await server.start("127.0.0.1", 0)
        try:
            async with asyncio.timeout(10):
                return await body(f"http://127.0.0.1:{srv.sockets[0].getsockname()[1]}")
        finally:
            await server.close(grace=1)

    return asyncio.run(main())


def test_get_post_and_default_headers() -> None:
    async def body(base: str) -> list[httpclient.Response]:
        return [
            await httpclient.request("GET", base + "/echo?a=1&b=x%20y"),
            await httpclient.request("POST", base + "/echo", body=b"hello"),
            await httpclient.request("PUT", base + "/echo"),
        ]

    get, post, put = run(body)
    assert (get.status, get.reason) == (200, "")
    assert get.headers.get("content-type") == "text/plain; charset=utf-8"
    assert get.body.startswith(b"GET /echo {'a': '1', 'b': 'x y'} 0 host=127.0.0.1:")
    assert get.headers.get("x-seen-length") == "-"  # a bodiless GET sends no length
    assert post.body.startswith(b"POST /echo {} 5")
    assert post.headers.get("x-seen-length") == "5"
    assert put.headers.get("x-seen-length") == "0"  # as http.client: PUT/POST always framed


def test_chunked_and_head_and_keepalive_on_one_connection() -> None:
    async def body(base: str) -> tuple[httpclient.Response, ...]:
        port = int(base.rsplit(":", 1)[1])
        async with await httpclient.connect("127.0.0.1", port) as conn:
            chunked = await conn.request("GET", "/stream?n=4")
            head = await conn.request("HEAD", "/big")
            again = await conn.request("GET", "/echo")
        return chunked, head, again

    chunked, head, again = run(body)
    assert chunked.body == b"chunk0;chunk1;chunk2;chunk3;"
    assert chunked.headers.get("transfer-encoding") == "chunked"
    assert (head.status, head.body, head.headers.get("content-length")) == (200, b"", "5000")
    assert again.body.startswith(b"GET /echo")


def test_bounds_raise_response_too_large() -> None:
    async def body(base: str) -> list[type[BaseException]]:
        errors: list[type[BaseException]] = []
        for path in ("/big", "/stream?n=1000"):  # by Content-Length, then while chunked
            with pytest.raises(ResponseTooLarge) as exc:
                await httpclient.request("GET", base + path, max_body=1000)
            errors.append(exc.type)
        ok = await httpclient.request("GET", base + "/big", max_body=5000)
        assert len(ok.body) == 5000
        return errors

    assert run(body) == [ResponseTooLarge, ResponseTooLarge]


def test_response_head_bound() -> None:
    async def body() -> None:
        answer = b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 3000 + b"\r\nContent-Length: 0\r\n\r\n"
        async with (
            canned_server(answer) as port,
            await httpclient.connect("127.0.0.1", port, max_head=1024) as conn,
        ):
            with pytest.raises(ResponseTooLarge):
                await conn.request("GET", "/")

    asyncio.run(body())


def test_time_limit_covers_a_silent_server() -> None:
    async def body() -> None:
        done = asyncio.Event()

        async def silent(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            await r.read()  # reads the request, never answers, until the client hangs up
            w.close()
            await w.wait_closed()
            done.set()

        srv = await asyncio.start_server(silent, "127.0.0.1", 0)
        url = f"http://127.0.0.1:{srv.sockets[0].getsockname()[1]}/"
        try:
            with pytest.raises(TimeoutError):
                await httpclient.request("GET", url, time_limit=0.2)
            await done.wait()
        finally:
            srv.close()

    asyncio.run(asyncio.wait_for(body(), 5))


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1\r\n\r\n",  # the short status line that crashed the old test client
        b"garbage\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",  # closed mid-body
        b"HTTP/1.1 200 OK\r\nBad Header\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"",  # closed without a word
    ],
)
def test_malformed_responses_raise_remote_protocol_error(answer: bytes) -> None:
    async def body() -> None:
        async with canned_server(answer) as port:
            with pytest.raises(RemoteProtocolError):
                await httpclient.request("GET", f"http://127.0.0.1:{port}/")

    asyncio.run(asyncio.wait_for(body(), 5))


def test_request_head_as_sent() -> None:
    seen: list[bytes] = []

    async def body() -> httpclient.Response:
        async with canned_server(b"HTTP/1.1 204 No Content\r\n\r\n", seen) as port:
            return await httpclient.request(
                "POST", f"http://127.0.0.1:{port}/p?q=1", headers=[("X-A", "b")]
            )

    resp = asyncio.run(body())
    assert (resp.status, resp.reason) == (204, "No Content")
    lines = seen[0].decode().split("\r\n")
    assert lines[0] == "POST /p?q=1 HTTP/1.1"
    assert lines[1].lower().startswith("host: 127.0.0.1:")
    assert {"x-a: b", "content-length: 0", "connection: close"} <= {x.lower() for x in lines}


def test_local_errors() -> None:
    async def body() -> None:
        for url in ("ftp://x/", "http:///nohost", "http://h:99999/", "nonsense"):
            with pytest.raises(LocalProtocolError):
                await httpclient.request("GET", url)
        conn = HTTPConnection(_ChunkReader([]), _NullWriter(), "h")  # type: ignore[arg-type]
        with pytest.raises(LocalProtocolError):
            await conn.request("GET", "/", [("X-A", "b\r\nInjected: 1")])

    asyncio.run(asyncio.wait_for(body(), 5))
    assert issubclass(LocalProtocolError, ValueError)


def test_host_header() -> None:
    assert httpclient.host_header("example.com", 443, 443) == "example.com"
    assert httpclient.host_header("example.com", 8443, 443) == "example.com:8443"
    assert httpclient.host_header("fd7a::1", 80, 80) == "[fd7a::1]"
    assert httpclient.host_header("fd7a::1", 81, 80) == "[fd7a::1]:81"


def test_unix_socket_and_sync_wrapper(tmp_path: Path) -> None:
    path = str(tmp_path / "s.sock")
    loop = asyncio.new_event_loop()
    server = HTTPServer(_router())
    loop.run_until_complete(server.start_unix(path))

    import threading

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        resp = httpclient.request_sync(
            "POST", "http://local.sock/echo", unix_socket=path, body=b"{}", time_limit=5
        )
        assert resp.status == 200
        assert resp.body == b"POST /echo {} 2 host=local.sock"
        with pytest.raises(FileNotFoundError):
            httpclient.request_sync("GET", "http://x/", unix_socket=str(tmp_path / "none"))
    finally:
        asyncio.run_coroutine_threadsafe(server.close(grace=1), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


def test_tls_verified_by_default_unverified_on_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from meshscale.lab.pki import LabCA

    ca = LabCA(tmp_path / "ca")
    cert, key = ca.issue(["localhost"], [])
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    monkeypatch.setenv("SSL_CERT_FILE", "/nonexistent")  # the lab CA is not trusted

    async def main() -> None:
        server = HTTPServer(_router())
        srv = await server.start("127.0.0.1", 0, ssl=server_tls)
        url = f"https://localhost:{srv.sockets[0].getsockname()[1]}/echo"
        try:
            with pytest.raises(ssl.SSLCertVerificationError):
                await httpclient.request("GET", url, time_limit=5)
            resp = await httpclient.request("GET", url, verify=False, time_limit=5)
            assert resp.status == 200
            trusting = ssl.create_default_context(cafile=str(ca.cert_path))
            resp = await httpclient.request("GET", url, tls=trusting, time_limit=5)
            assert resp.body.startswith(b"GET /echo")
            monkeypatch.setenv("SSL_CERT_FILE", str(ca.cert_path))  # honoured per request
            assert (await httpclient.request("GET", url, time_limit=5)).status == 200
        finally:
            await server.close(grace=1)

    asyncio.run(main())


def test_upgrade_keeps_bytes_read_with_the_101() -> None:
    async def body(base: str) -> tuple[httpclient.Upgraded, bytes]:
        port = int(base.rsplit(":", 1)[1])
        conn = await httpclient.connect("127.0.0.1", port)
        up = await conn.upgrade("GET", "/up", [("Upgrade", "echo"), ("Connection", "Upgrade")])
        got = await up.stream.readexactly(5)
        up.stream.write(b"abc")
        got += await up.stream.readexactly(3)
        up.stream.close()
        return up, got

    up, got = run(body)
    assert up.response.status == 101
    assert up.response.headers.get("echo-version") == "1"
    assert got == b"helloABC"


def test_upgrade_refused_carries_the_response() -> None:
    async def body(base: str) -> UpgradeRefused:
        port = int(base.rsplit(":", 1)[1])
        conn = await httpclient.connect("127.0.0.1", port)
        try:
            with pytest.raises(UpgradeRefused) as exc:
                await conn.upgrade("GET", "/up", [("Upgrade", "other"), ("Connection", "Upgrade")])
            return exc.value
        finally:
            await conn.close()

    refused = run(body)
    assert refused.response.status == 426
    assert refused.response.body == b"need upgrade"
    assert "426" in str(refused)


class _ChunkReader:
    """A StreamReader stand-in that returns the given chunks, then EOF."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = list(chunks)

    async def read(self, n: int = -1) -> bytes:
        return self.chunks.pop(0) if self.chunks else b""


class _NullWriter:
    def write(self, data: bytes) -> None:
        pass

    def writelines(self, data: list[bytes]) -> None:
        pass

    async def drain(self) -> None:
        pass

    def close(self) -> None:
        pass

    async def wait_closed(self) -> None:
        pass


@hsettings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=400),
        st.builds(
            lambda status, rest: b"HTTP/1.1 " + status + rest,
            st.sampled_from([b"101 ", b"200 OK", b"200", b"100 Continue\r\n\r\nHTTP/1.1 200 "]),
            st.binary(max_size=300),
        ),
    ),
    st.sampled_from(["request", "upgrade", "head"]),
)
def test_any_response_bytes_raise_only_http_client_error(data: bytes, how: str) -> None:
    """h11's fuzz invariant for our client: whatever the server sends, whole or byte by byte,
    the result is a Response, an Upgraded stream or an HTTPClientError; never anything else."""
    for chunks in ([data], [data[i : i + 1] for i in range(len(data))]):

        async def once(chunks: list[bytes] = chunks) -> None:
            conn = HTTPConnection(_ChunkReader(chunks), _NullWriter(), "h", max_head=256)  # type: ignore[arg-type]
            with contextlib.suppress(HTTPClientError):
                if how == "upgrade":
                    hdrs = [("Upgrade", "x"), ("Connection", "Upgrade")]
                    await conn.upgrade("GET", "/", hdrs, max_body=128)
                else:
                    await conn.request("HEAD" if how == "head" else "GET", "/", max_body=128)

        asyncio.run(once())
