"""One ts2021 session with the control server: dial, register, map, lite updates.

The transport (``/key``, the ``/ts2021`` upgrade, Noise and HTTP/2) is
``meshscale.controlhttp``; ``Direct`` speaks the control protocol over it: RegisterRequests
and MapRequests carrying what the backend reports (Hostinfo with NetInfo, endpoints and their
types), and the zstd-framed map stream (docs/protocol/control.md §4.1) decoded as
``tailcfg.MapResponse``::

    d = Direct("https://ctl.example.com", machine_key=..., node_key=..., disco_key=...,
               hostinfo=backend.hostinfo)
    await d.connect()                               # fetches /key when no control key given
    resp = await d.register(auth_key="hskey-auth-...")
    stream = await d.open_map(endpoints, endpoint_types)
    msg = await stream.next(wait=130)               # tailcfg.MapResponse
    await d.send_lite_update(endpoints, endpoint_types)
    await d.close()
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import struct
from collections.abc import Callable
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import zstandard

from meshscale.controlhttp import ClientError, H2Client, Reply, dial, fetch_key
from meshscale.key import DiscoPrivate, MachinePrivate, MachinePublic, NodePrivate
from meshscale.tailcfg import (
    CURRENT_CAPABILITY_VERSION,
    Hostinfo,
    MapRequest,
    MapResponse,
    ParseError,
    RegisterRequest,
    RegisterResponse,
    RegisterResponseAuth,
    dumps,
    from_json,
    loads,
    to_json,
)

MAX_MESSAGE = 16 << 20  # bytes per map message accepted: a hostile server's endless message

__all__ = [
    "ClientError",
    "ControlURLError",
    "Direct",
    "MapMessages",
    "MapStream",
    "parse_control_url",
]


class ControlURLError(ValueError):
    """The control URL cannot be used."""


def parse_control_url(url: str) -> tuple[str, int]:
    """(host, port) of an ``http://`` or ``https://`` control URL."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ControlURLError(f"control URL must be http(s)://host[:port], not {url!r}")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise ControlURLError(f"bad port in control URL {url!r}") from exc
    return parts.hostname, port


def decompress_bounded(
    dctx: zstandard.ZstdDecompressor, data: bytes, limit: int = MAX_MESSAGE
) -> bytes:
    """zstd frames -> at most ``limit`` bytes, or ClientError. Streaming, so the cap holds
    even when a frame declares its content size (``decompress(max_output_size=...)``
    believes the header: 16 KB could inflate to 512 MiB, issue #12 finding 5)."""
    out = bytearray()
    try:
        with dctx.stream_reader(io.BytesIO(data), read_across_frames=True) as reader:
            while True:
                chunk = reader.read(min(1 << 20, limit + 1 - len(out)))
                if not chunk:
                    return bytes(out)
                out += chunk
                if len(out) > limit:
                    raise ClientError(f"map message inflates past {limit} bytes")
    except zstandard.ZstdError as exc:
        raise ClientError(f"bad zstd map message: {exc}") from None


class MapStream:
    """Messages of one streaming map response (u32 little-endian length, then zstd JSON),
    decoded to JSON dicts."""

    def __init__(self, reply: Reply, compressed: bool) -> None:
        self._reply = reply
        self._buf = bytearray()
        self._compressed = compressed
        self._dctx = zstandard.ZstdDecompressor()
        self.keepalives = 0
        self.dropped = 0  # messages discarded unread while dropping (drop_messages)

    def drop_messages(self, on: bool) -> None:
        """While ``on``, whole messages are discarded as they arrive, synchronously in the
        connection's reader (no task per message); a message split across the switch is
        kept whole for the next read. For benchmarks that hold thousands of streams open
        between measurements."""
        if not on:
            self._reply.sink = None
            return
        q = self._reply.data
        while not q.empty():  # chunks already queued come first
            chunk = q.get_nowait()
            if chunk is None:  # the stream ended: let the next read say so
                q.put_nowait(None)
                break
            self._buf += chunk
        self._reply.sink = self._drop
        self._drop(b"")

    def _drop(self, chunk: bytes) -> None:
        buf = self._buf
        buf += chunk
        pos = 0
        while len(buf) - pos >= 4:
            (n,) = struct.unpack_from("<I", buf, pos)
            if n > MAX_MESSAGE or len(buf) - pos < 4 + n:
                break  # (an oversized one is refused by the next read)
            pos += 4 + n
            self.dropped += 1
        if pos:
            del buf[:pos]

    async def next(self, wait: float = 10.0, skip_keepalive: bool = True) -> dict[str, Any]:
        """The next message; raises TimeoutError after ``wait`` seconds."""
        async with asyncio.timeout(wait):
            while True:
                body = await self._next_json()
                try:
                    msg: dict[str, Any] = json.loads(body)
                except (ValueError, RecursionError) as exc:
                    raise ClientError(f"bad map message: {exc}") from None
                if not isinstance(msg, dict):
                    raise ClientError("map message is not a JSON object")
                if msg == {"KeepAlive": True}:
                    self.keepalives += 1
                    if skip_keepalive:
                        continue
                return msg

    async def next_raw(self, wait: float = 10.0) -> bytes:
        """The next message's JSON text, not parsed (keep-alives included); TimeoutError
        after ``wait`` seconds. For benchmarks that must not spend their CPU on decoding."""
        async with asyncio.timeout(wait):
            return await self._next_json()

    async def next_frame(self, wait: float = 10.0) -> bytes:
        """The next message's payload as sent (still zstd-compressed on a compressed stream),
        keep-alives included; TimeoutError after ``wait`` seconds. For benchmarks that read
        many streams and decompress only the messages they time."""
        async with asyncio.timeout(wait):
            return await self._next_frame()

    async def _next_json(self) -> bytes:
        body = await self._next_frame()
        return decompress_bounded(self._dctx, body) if self._compressed else body

    async def _next_frame(self) -> bytes:
        while True:
            if len(self._buf) >= 4:
                (n,) = struct.unpack_from("<I", self._buf)
                if n > MAX_MESSAGE:
                    raise ClientError(f"map message of {n} bytes")
                if len(self._buf) >= 4 + n:
                    body = bytes(self._buf[4 : 4 + n])
                    del self._buf[: 4 + n]
                    return body
            chunk = await self._reply.next_chunk()
            if chunk is None:
                raise ClientError("map stream ended")
            self._buf += chunk


class MapMessages:
    """The decoded messages of one map stream (keep-alives included)."""

    def __init__(self, stream: MapStream) -> None:
        self._stream = stream

    async def next(self, wait: float) -> MapResponse:
        """The next message; TimeoutError after ``wait`` s; ClientError when the stream ends."""
        raw = await self._stream.next(wait=wait, skip_keepalive=False)
        try:
            return from_json(MapResponse, raw)
        except ParseError as exc:
            raise ClientError(f"malformed map message: {exc}") from exc


class Direct:
    """A control session for one node; see the module docstring. ``node_key`` may be
    replaced between requests (key rotation: register with ``old_node_key``)."""

    def __init__(
        self,
        url: str,
        *,
        machine_key: MachinePrivate,
        node_key: NodePrivate,
        disco_key: DiscoPrivate,
        hostinfo: Callable[[], Hostinfo],
        control_key: MachinePublic | None = None,
        version: int = CURRENT_CAPABILITY_VERSION,
        rand: Callable[[int], bytes] = os.urandom,
        local_addr: str | None = None,
    ) -> None:
        self.host, self.port = parse_control_url(url)
        self.local_addr = local_addr  # source address to dial from (None: the kernel's)
        self.tls = url.startswith("https://")
        self.machine_key = machine_key
        self.node_key = node_key
        self.disco_key = disco_key
        self.control_key = control_key
        self.version = version
        self.rand = rand
        self._hostinfo = hostinfo
        self.early_payload: bytes | None = None
        self.closed = asyncio.Event()
        self._conn: H2Client | None = None

    # ---- session ----

    async def fetch_key(self) -> MachinePublic:
        """``GET /key``: over https verified, since this key is what authenticates the
        server to the Noise handshake (docs/protocol/control.md §1.1)."""
        return await fetch_key(self.host, self.port, tls=self.tls, version=self.version)

    async def connect(self) -> None:
        if self.control_key is None:
            self.control_key = await self.fetch_key()
        self._conn = await dial(
            self.host, self.port, tls=self.tls, machine_key=self.machine_key,
            control_key=self.control_key, version=self.version, rand=self.rand,
            local_addr=self.local_addr,
        )  # fmt: skip
        self.early_payload = self._conn.early_payload
        self.closed = self._conn.closed

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()

    async def start(self, method: str, path: str, body: bytes = b"") -> Reply:
        """Send a request on the session; returns once the response headers arrived."""
        if self._conn is None:
            raise ClientError("not connected")
        headers = [("content-type", "application/json"), ("ts-lb", self.node_key.public().text())]
        return await self._conn.start(method, path, body, headers)

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        reply = await self.start(method, path, body)
        return reply.status, await reply.body()

    # ---- the control protocol ----

    def hostinfo(self) -> Hostinfo:
        return self._hostinfo()

    async def register(
        self,
        auth_key: str = "",
        *,
        followup: str = "",
        expiry: datetime | None = None,
        ephemeral: bool = False,
        old_node_key: NodePrivate | None = None,
    ) -> RegisterResponse:
        rr = RegisterRequest(
            Version=self.version,
            NodeKey=self.node_key.public(),
            OldNodeKey=old_node_key.public() if old_node_key else None,
            NLKey="nlpub:" + "00" * 32,
            Auth=RegisterResponseAuth(AuthKey=auth_key) if auth_key else None,
            Expiry=expiry,
            Followup=followup,
            Hostinfo=self.hostinfo(),
            Ephemeral=ephemeral,
        )
        status, body = await self.request("POST", "/machine/register", dumps(rr))
        if status != 200:
            raise ClientError(f"register request: http {status}: {body[:200]!r}")
        return loads(RegisterResponse, body)

    def node_map_request(
        self, *, stream: bool, endpoints: list[str], endpoint_types: list[int],
        omit_peers: bool = False, hostinfo: Hostinfo | None = None,
    ) -> bytes:  # fmt: skip
        mr = MapRequest(
            Version=self.version,
            Compress="zstd",
            KeepAlive=True,
            NodeKey=self.node_key.public(),
            DiscoKey=self.disco_key.public(),
            Stream=stream,
            OmitPeers=omit_peers,
            Hostinfo=hostinfo or self.hostinfo(),
            Endpoints=endpoints,
            EndpointTypes=endpoint_types,
        )
        return json.dumps(to_json(mr)).encode()

    async def open_map_stream(self, body: bytes) -> MapStream:
        """POST a streaming MapRequest; the messages come out as JSON dicts."""
        reply = await self.start("POST", "/machine/map", body)
        if reply.status != 200:
            err = await reply.body()
            raise ClientError(f"map: http {reply.status}: {err[:200]!r}")
        return MapStream(reply, compressed=True)

    async def open_map(self, endpoints: list[str], endpoint_types: list[int]) -> MapMessages:
        body = self.node_map_request(
            stream=True, endpoints=endpoints, endpoint_types=endpoint_types
        )
        return MapMessages(await self.open_map_stream(body))

    async def send_lite_update(self, endpoints: list[str], endpoint_types: list[int]) -> None:
        body = self.node_map_request(
            stream=False, omit_peers=True, endpoints=endpoints, endpoint_types=endpoint_types
        )
        status, text = await self.request("POST", "/machine/map", body)
        if status != 200:
            raise ClientError(f"endpoint update: http {status}: {text[:200]!r}")
