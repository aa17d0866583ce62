"""A small ts2021 control client for tests and benchmarks (not the node agent).

Speaks the real protocol over TCP: ``GET /key``, the ``/ts2021`` upgrade, the Noise
handshake (meshscale.controlbase), HTTP/2 (h2, client side), ``/machine/register`` and
``/machine/map`` with zstd-framed streaming responses::

    c = ControlClient("127.0.0.1", port, machine_key=..., node_key=..., disco_key=...)
    await c.connect()                              # fetches /key when no control key given
    resp = await c.register(auth_key="hskey-auth-...")
    stream = await c.map_stream(endpoints=["192.0.2.1:41641"])
    first = await stream.next()                     # dict: the full MapResponse JSON
    delta = await stream.next(wait=5)
    await c.close()
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.settings
import zstandard

from meshscale.controlbase import ClientConn, ClientHandshake, EarlyPayloadReader
from meshscale.key import DiscoPrivate, MachinePrivate, MachinePublic, NodePrivate
from meshscale.tailcfg import (
    CURRENT_CAPABILITY_VERSION,
    Hostinfo,
    MapRequest,
    NetInfo,
    OverTLSPublicKeyResponse,
    RegisterRequest,
    RegisterResponse,
    RegisterResponseAuth,
    dumps,
    loads,
    to_json,
)

MAX_MESSAGE = 16 << 20  # bytes per map message accepted by this client


class ClientError(Exception):
    pass


@dataclass(slots=True)
class _Reply:
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    got_headers: asyncio.Event = field(default_factory=asyncio.Event)
    data: asyncio.Queue[bytes | None] = field(default_factory=asyncio.Queue)


async def _http_get(host: str, port: int, path: str) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        raw = await reader.read(-1)
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, body


class MapStream:
    """Messages of one streaming map response, decoded to JSON dicts."""

    def __init__(self, reply: _Reply, compressed: bool) -> None:
        self._reply = reply
        self._buf = bytearray()
        self._compressed = compressed
        self._dctx = zstandard.ZstdDecompressor()
        self.keepalives = 0

    async def next(self, wait: float = 10.0, skip_keepalive: bool = True) -> dict[str, Any]:
        """The next message; raises TimeoutError after ``wait`` seconds."""
        async with asyncio.timeout(wait):
            while True:
                if len(self._buf) >= 4:
                    (n,) = struct.unpack_from("<I", self._buf)
                    if n > MAX_MESSAGE:
                        raise ClientError(f"map message of {n} bytes")
                    if len(self._buf) >= 4 + n:
                        body = bytes(self._buf[4 : 4 + n])
                        del self._buf[: 4 + n]
                        if self._compressed:
                            body = self._dctx.decompress(body, max_output_size=MAX_MESSAGE)
                        msg: dict[str, Any] = json.loads(body)
                        if msg == {"KeepAlive": True}:
                            self.keepalives += 1
                            if skip_keepalive:
                                continue
                        return msg
                chunk = await self._reply.data.get()
                if chunk is None:
                    raise ClientError("map stream ended")
                self._buf += chunk


class ControlClient:
    """See the module docstring. Keys are generated from ``rand`` when not given."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        control_key: MachinePublic | None = None,
        machine_key: MachinePrivate | None = None,
        node_key: NodePrivate | None = None,
        disco_key: DiscoPrivate | None = None,
        version: int = CURRENT_CAPABILITY_VERSION,
        hostname: str = "testnode",
        rand: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.host = host
        self.port = port
        self.control_key = control_key
        self.machine_key = machine_key or MachinePrivate(rand(32))
        self.node_key = node_key or NodePrivate(rand(32))
        self.disco_key = disco_key or DiscoPrivate(rand(32))
        self.version = version
        self.hostname = hostname
        self.rand = rand
        self.early_payload: bytes | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._replies: dict[int, _Reply] = {}
        self._window = asyncio.Event()
        self._h2: h2.connection.H2Connection | None = None
        self._noise: ClientConn | None = None
        self.closed = asyncio.Event()

    async def fetch_key(self) -> MachinePublic:
        status, body = await _http_get(self.host, self.port, f"/key?v={self.version}")
        if status != 200:
            raise ClientError(f"/key: http {status}")
        key = loads(OverTLSPublicKeyResponse, body).publicKey
        if key is None:
            raise ClientError("control server is too old; no noise key")
        return key

    async def connect(self) -> None:
        if self.control_key is None:
            self.control_key = await self.fetch_key()
        hs = ClientHandshake(self.machine_key, self.control_key, self.version, self.rand(32))
        noise = ClientConn(hs, self.control_key)
        reader, writer = await asyncio.open_connection(self.host, self.port)
        try:
            req = (
                f"POST /ts2021 HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                "Upgrade: tailscale-control-protocol\r\nConnection: upgrade\r\n"
                f"X-Tailscale-Handshake: {base64.b64encode(noise.initiation).decode()}\r\n"
                "Content-Length: 0\r\n\r\n"
            )
            writer.write(req.encode())
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            if lines[0].split(" ")[1] != "101":
                writer.close()
                raise ClientError(f"upgrade refused: {lines[0]}")
            hdrs = {
                k.strip().lower(): v.strip()
                for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)
            }
            if hdrs.get("upgrade") != "tailscale-control-protocol":
                raise ClientError("bad Upgrade header in 101")
            self._writer = writer
            self._noise = noise
            early = EarlyPayloadReader()
            initial = b""
            while noise.conn is None or not early.done:
                data = await reader.read(65536)
                if not data:
                    raise ClientError("connection closed during handshake")
                initial += early.feed(noise.receive_data(data))
            self.early_payload = early.payload
            cfg = h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
            self._h2 = h2.connection.H2Connection(config=cfg)
            self._h2.initiate_connection()
            self._h2.increment_flow_control_window(1 << 24)
            self._flush()
            if initial:
                self._feed(initial)
        except BaseException:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            raise
        self._reader_task = asyncio.get_running_loop().create_task(self._read_loop(reader))

    def _flush(self) -> None:
        assert self._h2 is not None
        assert self._noise is not None
        assert self._noise.conn is not None
        data = self._h2.data_to_send()
        if data and self._writer is not None and not self._writer.is_closing():
            self._writer.write(self._noise.conn.send(data))

    def _feed(self, plaintext: bytes) -> None:
        assert self._h2 is not None
        for ev in self._h2.receive_data(plaintext):
            if isinstance(ev, h2.events.ResponseReceived):
                r = self._replies.get(ev.stream_id)
                if r is not None:
                    r.headers = {str(k): str(v) for k, v in ev.headers or []}
                    r.status = int(r.headers.get(":status", "0"))
                    r.got_headers.set()
            elif isinstance(ev, h2.events.DataReceived):
                if ev.flow_controlled_length:
                    self._h2.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                r = self._replies.get(ev.stream_id)
                if r is not None and ev.data:
                    r.data.put_nowait(ev.data)
            elif isinstance(ev, h2.events.StreamEnded | h2.events.StreamReset):
                r = self._replies.pop(ev.stream_id, None)
                if r is not None:
                    r.got_headers.set()
                    r.data.put_nowait(None)
            elif isinstance(ev, h2.events.WindowUpdated | h2.events.RemoteSettingsChanged):
                self._window.set()
        self._flush()

    async def _read_loop(self, reader: asyncio.StreamReader) -> None:
        assert self._noise is not None
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                plain = self._noise.receive_data(data)
                if plain:
                    self._feed(plain)
        except (ConnectionError, ValueError):
            pass
        finally:
            self.closed.set()
            for r in list(self._replies.values()):
                r.got_headers.set()
                r.data.put_nowait(None)
            self._replies.clear()

    async def _start(self, method: str, path: str, body: bytes) -> _Reply:
        if self._h2 is None:
            raise ClientError("not connected")
        sid = self._h2.get_next_available_stream_id()
        reply = _Reply()
        self._replies[sid] = reply
        headers = [
            (":method", method),
            (":scheme", "https"),
            (":authority", self.host),
            (":path", path),
            ("content-type", "application/json"),
            ("content-length", str(len(body))),
            ("ts-lb", self.node_key.public().text()),
        ]
        self._h2.send_headers(sid, headers, end_stream=not body)
        self._flush()
        view = memoryview(body)
        while view:
            n = min(
                len(view),
                self._h2.local_flow_control_window(sid),
                self._h2.max_outbound_frame_size,
            )
            if n <= 0:
                if reply.got_headers.is_set():  # answered (or reset) before the body went out
                    break
                self._window.clear()
                waiter = asyncio.ensure_future(self._window.wait())
                headers_seen = asyncio.ensure_future(reply.got_headers.wait())
                await asyncio.wait([waiter, headers_seen], return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                headers_seen.cancel()
                continue
            self._h2.send_data(sid, bytes(view[:n]), end_stream=n == len(view))
            self._flush()
            view = view[n:]
        await reply.got_headers.wait()
        if reply.status == 0:
            raise ClientError("connection closed")
        return reply

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        reply = await self._start(method, path, body)
        out = bytearray()
        while (chunk := await reply.data.get()) is not None:
            out += chunk
        return reply.status, bytes(out)

    def hostinfo(self, preferred_derp: int = 0) -> Hostinfo:
        hi = Hostinfo(Hostname=self.hostname, OS="linux", IPNVersion="meshscale-testclient")
        if preferred_derp:
            hi.NetInfo = NetInfo(PreferredDERP=preferred_derp)
        return hi

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

    def map_request(
        self, *, stream: bool, omit_peers: bool = False, endpoints: list[str] | None = None,
        preferred_derp: int = 0,
    ) -> bytes:  # fmt: skip
        mr = MapRequest(
            Version=self.version,
            Compress="zstd",
            KeepAlive=True,
            NodeKey=self.node_key.public(),
            DiscoKey=self.disco_key.public(),
            Stream=stream,
            OmitPeers=omit_peers,
            Hostinfo=self.hostinfo(preferred_derp),
            Endpoints=endpoints or [],
        )
        return json.dumps(to_json(mr)).encode()

    async def map_stream(
        self, endpoints: list[str] | None = None, preferred_derp: int = 0
    ) -> MapStream:
        body = self.map_request(stream=True, endpoints=endpoints, preferred_derp=preferred_derp)
        reply = await self._start("POST", "/machine/map", body)
        if reply.status != 200:
            err = bytearray()
            while (chunk := await reply.data.get()) is not None:
                err += chunk
            raise ClientError(f"map: http {reply.status}: {bytes(err)[:200]!r}")
        return MapStream(reply, compressed=True)

    async def lite_update(self, endpoints: list[str], preferred_derp: int = 0) -> int:
        body = self.map_request(
            stream=False, omit_peers=True, endpoints=endpoints, preferred_derp=preferred_derp
        )
        status, _ = await self.request("POST", "/machine/map", body)
        return status

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(Exception):
                await self._writer.wait_closed()
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader_task
