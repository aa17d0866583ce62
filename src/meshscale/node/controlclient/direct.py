"""One ts2021 session with the control server: dial, register, map, lite updates.

The transport (``/key``, the ``/ts2021`` upgrade, Noise, HTTP/2 and the zstd-framed map
stream) is ``meshscale.control.testclient.ControlClient``; ``Direct`` adapts it to the node:
its Hostinfo and MapRequests carry what the backend reports (NetInfo, endpoint types), and
map messages come out decoded as ``tailcfg.MapResponse``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import ssl
from collections.abc import Callable
from urllib.parse import urlsplit

import h2.config
import h2.connection

from meshscale.control.testclient import ClientError, ControlClient, MapStream
from meshscale.controlbase import ClientConn, ClientHandshake, EarlyPayloadReader
from meshscale.key import DiscoPrivate, MachinePrivate, MachinePublic, NodePrivate
from meshscale.tailcfg import (
    CURRENT_CAPABILITY_VERSION,
    Hostinfo,
    MapRequest,
    MapResponse,
    OverTLSPublicKeyResponse,
    ParseError,
    from_json,
    loads,
    to_json,
)

MAX_KEY_RESPONSE = 64 * 1024  # bytes: what the official client reads of /key

__all__ = ["ClientError", "Direct", "MapMessages", "parse_control_url"]


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


class Direct(ControlClient):
    """A control session for one node; see the module docstring."""

    def __init__(
        self,
        url: str,
        *,
        machine_key: MachinePrivate,
        node_key: NodePrivate,
        disco_key: DiscoPrivate,
        hostinfo: Callable[[], Hostinfo],
        rand: Callable[[int], bytes] = os.urandom,
    ) -> None:
        host, port = parse_control_url(url)
        self.tls = url.startswith("https://")
        super().__init__(
            host, port, machine_key=machine_key, node_key=node_key, disco_key=disco_key,
            version=CURRENT_CAPABILITY_VERSION, rand=rand,
        )  # fmt: skip
        self._hostinfo = hostinfo

    # ---- TLS (https:// control URLs) ----

    def _verified_context(self) -> ssl.SSLContext:
        return ssl.create_default_context()  # honours SSL_CERT_FILE, as the Go client does

    async def fetch_key(self) -> MachinePublic:
        """``GET /key`` over the URL as given; over TLS it is verified, since this key is
        what authenticates the server to the Noise handshake (spec 1.1)."""
        if not self.tls:
            return await super().fetch_key()
        reader, writer = await asyncio.open_connection(
            self.host, self.port, ssl=self._verified_context(), server_hostname=self.host
        )
        try:
            writer.write(
                f"GET /key?v={self.version} HTTP/1.1\r\nHost: {self.host}\r\n"
                "Connection: close\r\n\r\n".encode()
            )
            await writer.drain()
            raw = await reader.read(MAX_KEY_RESPONSE)
        finally:
            writer.close()
        head, _, body = raw.partition(b"\r\n\r\n")
        parts = head.split(b" ", 2)
        if len(parts) < 2 or parts[1] != b"200":
            raise ClientError(f"/key: {head[:80]!r}")
        if b"chunked" in head.lower():
            body = _dechunk(body)
        key = loads(OverTLSPublicKeyResponse, body).publicKey
        if key is None:
            raise ClientError("control server is too old; no noise key")
        return key

    async def connect(self) -> None:
        if not self.tls:
            return await super().connect()
        # Over https the upgrade runs inside TLS. The Noise layer authenticates the server,
        # so, as upstream, certificate problems there are not fatal (spec 2.3).
        if self.control_key is None:
            self.control_key = await self.fetch_key()
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        hs = ClientHandshake(self.machine_key, self.control_key, self.version, self.rand(32))
        noise = ClientConn(hs, self.control_key)
        reader, writer = await asyncio.open_connection(
            self.host, self.port, ssl=ctx, server_hostname=self.host
        )
        try:
            writer.write(
                f"POST /ts2021 HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                "Upgrade: tailscale-control-protocol\r\nConnection: upgrade\r\n"
                f"X-Tailscale-Handshake: {base64.b64encode(noise.initiation).decode()}\r\n"
                "Content-Length: 0\r\n\r\n".encode()
            )
            await writer.drain()
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            status = head[0].split(" ")
            if len(status) < 2 or status[1] != "101":
                raise ClientError(f"upgrade refused: {head[0][:80]}")
            upgrade = [ln.partition(":")[2].strip() for ln in head[1:]
                       if ln.lower().startswith("upgrade:")]  # fmt: skip
            if upgrade != ["tailscale-control-protocol"]:
                raise ClientError("bad Upgrade header in 101")
            early = EarlyPayloadReader()
            initial = b""
            while noise.conn is None or not early.done:
                data = await reader.read(65536)
                if not data:
                    raise ClientError("connection closed during handshake")
                initial += early.feed(noise.receive_data(data))
        except BaseException:
            writer.close()
            raise
        self.early_payload = early.payload
        self._writer = writer
        self._noise = noise
        cfg = h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        self._h2 = h2.connection.H2Connection(config=cfg)
        self._h2.initiate_connection()
        self._h2.increment_flow_control_window(1 << 24)
        self._flush()
        if initial:
            self._feed(initial)
        self._reader_task = asyncio.get_running_loop().create_task(self._read_loop(reader))

    def hostinfo(self, preferred_derp: int = 0) -> Hostinfo:
        return self._hostinfo()

    def node_map_request(
        self, *, stream: bool, endpoints: list[str], endpoint_types: list[int],
        omit_peers: bool = False,
    ) -> bytes:  # fmt: skip
        mr = MapRequest(
            Version=self.version,
            Compress="zstd",
            KeepAlive=True,
            NodeKey=self.node_key.public(),
            DiscoKey=self.disco_key.public(),
            Stream=stream,
            OmitPeers=omit_peers,
            Hostinfo=self._hostinfo(),
            Endpoints=endpoints,
            EndpointTypes=endpoint_types,
        )
        return json.dumps(to_json(mr)).encode()

    async def open_map(self, endpoints: list[str], endpoint_types: list[int]) -> MapMessages:
        body = self.node_map_request(
            stream=True, endpoints=endpoints, endpoint_types=endpoint_types
        )
        reply = await self._start("POST", "/machine/map", body)
        if reply.status != 200:
            err = bytearray()
            while (chunk := await reply.data.get()) is not None:
                err += chunk
            raise ClientError(f"map: http {reply.status}: {bytes(err)[:200]!r}")
        return MapMessages(MapStream(reply, compressed=True))

    async def send_lite_update(self, endpoints: list[str], endpoint_types: list[int]) -> None:
        body = self.node_map_request(
            stream=False, omit_peers=True, endpoints=endpoints, endpoint_types=endpoint_types
        )
        status, text = await self.request("POST", "/machine/map", body)
        if status != 200:
            raise ClientError(f"endpoint update: http {status}: {text[:200]!r}")


def _dechunk(b: bytes) -> bytes:
    out = bytearray()
    while b:
        size, _, rest = b.partition(b"\r\n")
        try:
            n = int(size.split(b";")[0], 16)
        except ValueError as exc:
            raise ClientError("/key: bad chunked body") from exc
        if n == 0:
            break
        out += rest[:n]
        b = rest[n + 2 :]
    return bytes(out)
