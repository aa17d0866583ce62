"""The client's side of ts2021: ``/key``, the ``/ts2021`` upgrade, Noise, then HTTP/2.

Flow (docs/protocol/control.md §1.1, 2.1-2.7; the server's side is server.py)::

    key = await fetch_key(host, port, tls=True, version=130)     # GET /key?v=130
    conn = await dial(host, port, tls=True, machine_key=..., control_key=key, version=130)
      POST /ts2021  Upgrade: tailscale-control-protocol, X-Tailscale-Handshake: <initiation>
      -> 101, the Noise response, [early payload], then HTTP/2 inside controlbase records
    status, body = await conn.request("POST", "/machine/register", body, headers)
    reply = await conn.start("POST", "/machine/map", body, headers)   # a streaming response
    while (chunk := await reply.next_chunk()) is not None: ...
    await conn.close()

Over https ``/key`` is fetched with the certificate verified: that key is what authenticates
the server to the Noise handshake (docs/protocol/control.md §1.1). The upgrade itself runs inside
TLS that is not verified, as upstream does, since Noise authenticates the server there
(docs/protocol/control.md §2.3).

Errors: ``ClientError`` for a refusal or a broken session; OSError (ssl.SSLError included)
and TimeoutError from the transport; controlbase's HandshakeError (a ValueError) when the
server refuses the handshake with an error frame.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events
import h2.settings

from meshscale.controlbase import ClientConn, ClientHandshake, EarlyPayloadReader
from meshscale.io import httpclient
from meshscale.io.stream import RawStream
from meshscale.key import MachinePrivate, MachinePublic
from meshscale.tailcfg import OverTLSPublicKeyResponse, loads

from .noisestream import READ_CHUNK, NoiseStream
from .server import HANDSHAKE_HEADER, UPGRADE_PROTOCOL

MAX_KEY_RESPONSE = 64 * 1024  # bytes: what the official client reads of /key
# Our receive window for the whole connection: map responses of a large tailnet arrive
# without waiting for window updates.
CONNECTION_WINDOW = 1 << 24  # bytes
# Our receive window per stream (SETTINGS_INITIAL_WINDOW_SIZE), as Go's HTTP/2 transport in
# tailscaled advertises (4 MiB): with h2's default of 64 KiB a full map of a 10,000-node
# tailnet (about 250 KiB compressed) took 4-8 WINDOW_UPDATE round trips, each waiting on
# both event loops, and every 32 KiB of the map stream's deltas cost another update.
STREAM_WINDOW = 1 << 22  # bytes


class ClientError(Exception):
    """The control server refused us or the ts2021 session broke."""


@dataclass(slots=True)
class Reply:
    """One HTTP/2 response as it arrives: the status, then body chunks."""

    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    got_headers: asyncio.Event = field(default_factory=asyncio.Event)
    data: asyncio.Queue[bytes | None] = field(default_factory=asyncio.Queue)
    # When set, body chunks are handed to it as they are read instead of queued (a reader
    # that consumes synchronously: no task wake-up per chunk). The end still goes to data.
    sink: Callable[[bytes], None] | None = None

    async def next_chunk(self) -> bytes | None:
        """The next piece of the body; None once the stream ended (or the connection)."""
        return await self.data.get()

    async def body(self) -> bytes:
        """The rest of the body."""
        out = bytearray()
        while (chunk := await self.data.get()) is not None:
            out += chunk
        return bytes(out)


def _authority(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def fetch_key(host: str, port: int, *, tls: bool, version: int) -> MachinePublic:
    """``GET /key?v=N``: the server's Noise key (verified TLS when ``tls``)."""
    scheme = "https" if tls else "http"
    try:
        resp = await httpclient.request(
            "GET",
            f"{scheme}://{_authority(host, port)}/key?v={version}",
            headers=[("Host", host)],
            max_body=MAX_KEY_RESPONSE,
            time_limit=None,  # the caller bounds the whole dial
        )
    except httpclient.HTTPClientError as exc:
        raise ClientError(f"/key: {exc}") from exc
    if resp.status != 200:
        raise ClientError(f"/key: http {resp.status}")
    key = loads(OverTLSPublicKeyResponse, resp.body).publicKey
    if key is None:
        raise ClientError("control server is too old; no noise key")
    return key


async def dial(
    host: str,
    port: int,
    *,
    tls: bool,
    machine_key: MachinePrivate,
    control_key: MachinePublic,
    version: int,
    rand: Callable[[int], bytes] = os.urandom,
    local_addr: str | None = None,
) -> H2Client:
    """The ``/ts2021`` upgrade, the Noise handshake and the early payload; returns the
    HTTP/2 connection, running. The caller bounds it in time. ``local_addr``: the source
    address to bind (httpclient.connect)."""
    hs = ClientHandshake(machine_key, control_key, version, rand(32))
    noise = ClientConn(hs, control_key)
    conn = await httpclient.connect(
        host,
        port,
        tls=httpclient.tls_context(verify=False) if tls else None,
        authority=_authority(host, port),
        local_addr=local_addr,
    )
    try:
        headers = [
            ("Upgrade", UPGRADE_PROTOCOL),
            ("Connection", "upgrade"),
            (HANDSHAKE_HEADER, base64.b64encode(noise.initiation).decode()),
        ]
        try:
            up = await conn.upgrade("POST", "/ts2021", headers, max_body=4096)
        except httpclient.UpgradeRefused as exc:
            raise ClientError(f"upgrade refused: HTTP {exc.response.status}") from exc
        except httpclient.HTTPClientError as exc:
            raise ClientError(f"ts2021 upgrade: {exc}") from exc
        if up.response.headers.get_all("upgrade") != [UPGRADE_PROTOCOL]:
            raise ClientError("bad Upgrade header in 101")
        early = EarlyPayloadReader()
        initial = b""
        while noise.conn is None or not early.done:
            data = await up.stream.read(READ_CHUNK)
            if not data:
                raise ClientError("connection closed during handshake")
            initial += early.feed(noise.receive_data(data))
    except BaseException:
        await conn.close()
        raise
    stream = NoiseStream(up.stream, noise.conn)
    client = H2Client(up.stream, stream, host, early.payload)
    client.start_connection(initial)
    return client


class H2Client:
    """HTTP/2 (client side) inside an established ts2021 connection; built by ``dial``."""

    def __init__(
        self, raw: RawStream, stream: NoiseStream, authority: str, early_payload: bytes | None
    ) -> None:
        self._raw = raw
        self._stream = stream
        self.authority = authority
        self.early_payload = early_payload
        cfg = h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        self._h2 = h2.connection.H2Connection(config=cfg)
        self._replies: dict[int, Reply] = {}
        self._window = asyncio.Event()
        self._reader_task: asyncio.Task[None] | None = None
        self.closed = asyncio.Event()

    def start_connection(self, initial: bytes) -> None:
        """Send our preface and settings, feed the plaintext that came with the handshake,
        and start reading."""
        self._h2.local_settings = h2.settings.Settings(
            client=True,
            initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW},
        )
        self._h2.initiate_connection()
        self._h2.increment_flow_control_window(CONNECTION_WINDOW)
        self._flush()
        if initial:
            self._feed(initial)
        self._reader_task = asyncio.get_running_loop().create_task(self._read_loop())

    def _flush(self) -> None:
        data = self._h2.data_to_send()
        if data and not self._raw.is_closing():
            self._stream.write(data)

    def _feed(self, plaintext: bytes) -> None:
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
                    if r.sink is not None:
                        r.sink(ev.data)
                    else:
                        r.data.put_nowait(ev.data)
            elif isinstance(ev, h2.events.StreamEnded | h2.events.StreamReset):
                r = self._replies.pop(ev.stream_id, None)
                if r is not None:
                    r.got_headers.set()
                    r.data.put_nowait(None)
            elif isinstance(ev, h2.events.WindowUpdated | h2.events.RemoteSettingsChanged):
                self._window.set()
        self._flush()

    async def _read_loop(self) -> None:
        try:
            while True:
                plain = await self._stream.read()
                if not plain:
                    break
                self._feed(plain)
        except (ConnectionError, ValueError):
            pass
        finally:
            self.closed.set()
            for r in list(self._replies.values()):
                r.got_headers.set()
                r.data.put_nowait(None)
            self._replies.clear()

    async def start(
        self, method: str, path: str, body: bytes = b"", headers: Sequence[tuple[str, str]] = ()
    ) -> Reply:
        """Send a request; returns once the response headers arrived (body still coming)."""
        if self.closed.is_set():
            raise ClientError("connection closed")
        sid = self._h2.get_next_available_stream_id()
        reply = Reply()
        self._replies[sid] = reply
        hdrs = [
            (":method", method),
            (":scheme", "https"),
            (":authority", self.authority),
            (":path", path),
            *headers,
            ("content-length", str(len(body))),
        ]
        self._h2.send_headers(sid, hdrs, end_stream=not body)
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

    async def request(
        self, method: str, path: str, body: bytes = b"", headers: Sequence[tuple[str, str]] = ()
    ) -> tuple[int, bytes]:
        """A whole request and response: (status, body)."""
        reply = await self.start(method, path, body, headers)
        return reply.status, await reply.body()

    async def close(self) -> None:
        self._raw.close()
        await self._raw.wait_closed()
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader_task
