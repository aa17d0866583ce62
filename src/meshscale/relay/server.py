"""The DERP relay driver: login, a read callback per client, mesh links.

A driver with no protocol decisions: the routing core ``meshscale.derp.relay.Relay`` decides
where frames go; this module moves bytes between the upgraded streams and the core.

Per client connection, after login::

    reader:  the transport reads into a DERPReader (fastpath.py; no task, no stream reader)
             -> Relay.handle_buffer routes every frame of the read -> the routed frames
             (direct output, or the bounded queues) are written to their transports, one
             send per destination per event-loop turn (sink.py). WebSocket streams keep a
             read loop: stream.read -> FrameBuffer -> Relay.handle_frame.
    drain:   a task that exists only while a transport holds > 256 KiB; it waits (2 s
             deadline) and flushes the queue the core kept meanwhile
    timer:   KeepAlive after 60 s (+ jitter) without a write

A slow or dead reader only ever fills its own bounded queue (head drop in the core) and is
closed when one drain takes longer than ``write_timeout``; nobody else waits for it.

Admission: a mesh key that matches is trusted; otherwise ``verify_client(key, info)`` (when
set) must return True. The remote address of the client being verified is in the
``CLIENT_SOURCE`` context variable (used by the verify-client URL hook).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import ipaddress
import logging
import math
import os
import random
import ssl as ssl_module
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from ..derp import frames as F
from ..derp.errors import AdmissionError, DERPError, HandshakeError
from ..derp.info import ClientInfo
from ..derp.relay import Relay
from ..derphttp import DERPClient
from ..derphttp.websocket import ByteStream
from ..io.http import Request, Response, UpgradeStream
from ..io.stream import RawStream
from ..key import NodePrivate, NodePublic
from .fastpath import MAX_STALL, DERPReader
from .sink import Sink as _Sink
from .websocket import accept_websocket, wants_derp_websocket

log = logging.getLogger(__name__)

VerifyClient = Callable[[NodePublic, ClientInfo], Awaitable[bool]]
CLIENT_SOURCE: contextvars.ContextVar[str] = contextvars.ContextVar(
    "derp_client_source", default=""
)

LOGIN_TIMEOUT = 10.0  # seconds for ServerKey..ClientInfo: stops slowloris logins
VERIFY_TIMEOUT = 5.0  # seconds for the admission hook
WRITE_TIMEOUT = 2.0  # seconds one write may block: clients that never read are closed
MESH_WRITE_TIMEOUT = 30.0  # seconds, for mesh peers
MESH_RETRY = 5.0  # seconds between mesh reconnects
READ_CHUNK = 64 * 1024  # bytes per read; below WRITE_HIGH_WATER, so one corked read never blocks
# Bytes a client's transport may buffer before its frames wait in the core's bounded queue
# instead; stops one slow reader from growing our memory without bound.
WRITE_HIGH_WATER = 256 * 1024
# Frames routed from one read before the queues are flushed to the sockets. Batching saves
# a send() per packet; it stays below the queue depth (32) so a burst inside one read is
# never head-dropped at a destination that is keeping up.
FLUSH_EVERY = 16
KEEP_ALIVE_FRAME = F.keep_alive()


@dataclass(slots=True)
class ServerCounters:
    accepts: int = 0
    logins: int = 0
    login_failures: dict[str, int] = field(default_factory=dict)
    write_timeouts: int = 0
    protocol_errors: int = 0
    fast_starts: int = 0
    websockets: int = 0
    home_clients: int = 0
    revoked: int = 0  # connections closed because their key lost admission

    def fail(self, reason: str) -> None:
        self.login_failures[reason] = self.login_failures.get(reason, 0) + 1


class DERPServer:
    """One DERP node: mount ``handle_upgrade`` on /derp (see ``relay.app.mount_derp``)."""

    def __init__(
        self,
        private: NodePrivate,
        *,
        mesh_key: bytes | None = None,
        verify_client: VerifyClient | None = None,
        queue_depth: int = 32,
        write_timeout: float = WRITE_TIMEOUT,
        login_timeout: float = LOGIN_TIMEOUT,
        keepalive: float = F.KEEP_ALIVE,
        key_header_prefix: str = "",
        rand: Callable[[int], bytes] = os.urandom,
        accept_limit: float = math.inf,
        accept_burst: int = 1 << 62,
        max_stall: float = MAX_STALL,
    ) -> None:
        """
        :param private: the server key.
        :param mesh_key: 32-byte mesh secret; enables mesh peers.
        :param verify_client: admission hook; None admits every client with a valid box.
        :param key_header_prefix: "" (derper) or "nodekey:" (Headscale) for Derp-Public-Key.
        :param accept_limit: new connections per second (token bucket, derper's
            --accept-connection-limit); over-limit connections are closed at once.
        :param accept_burst: the bucket's size (--accept-connection-burst).
        :param max_stall: seconds a sender's reading may wait for one backed-up
            destination before packets for it are head-dropped (fastpath.py).
        """
        self.relay = Relay(private, mesh_key=mesh_key, queue_depth=queue_depth)
        self.private = private
        self.verify_client = verify_client
        self.write_timeout = write_timeout
        self.login_timeout = login_timeout
        self.keepalive = keepalive
        self.key_header_prefix = key_header_prefix
        self.counters = ServerCounters()
        self._rand = rand
        self.max_stall = max_stall
        self.accept_limit = accept_limit
        self.accept_burst = accept_burst
        self._accept_tokens = float(min(accept_burst, 1 << 62))
        self._accept_at: float | None = None
        self._sinks: dict[int, _Sink] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._mesh_tasks: list[asyncio.Task[None]] = []

    @property
    def public(self) -> NodePublic:
        return self.private.public()

    # ---- HTTP entry point ---------------------------------------------------------------

    async def handle_upgrade(self, req: Request, stream: UpgradeStream) -> Response | None:
        """The /derp upgrade handler (docs/protocol/derp-disco-stun.md §1.1)."""
        if req.path in ("/derp/probe", "/derp/latency-check"):
            return Response(200, b"", [("Access-Control-Allow-Origin", "*")])
        upgrade = (req.headers.get("upgrade") or "").lower()
        if upgrade not in ("derp", "websocket"):
            return Response.text(426, "DERP requires connection upgrade")
        remote = None
        if req.client is not None:
            with contextlib.suppress(ValueError):
                ip = ipaddress.ip_address(req.client[0].split("%", 1)[0])
                if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
                    ip = ip.ipv4_mapped  # a dual-stack listener reports IPv4 peers mapped
                remote = (ip, req.client[1])
        not_ideal = "ideal-node" in req.headers
        if wants_derp_websocket(req):
            self.counters.websockets += 1
            ws = await accept_websocket(req, stream)
            del req  # the connection may live for days: keep no request (idle memory)
            await self.serve_stream(ws, remote, not_ideal=not_ideal)
            return None
        # Very old clients sent "Upgrade: WebSocket" but spoke raw DERP (1.3).
        fast_start = req.headers.get("derp-fast-start") == "1"
        del req
        if fast_start:
            self.counters.fast_starts += 1  # the client took our key from the meta cert
            await stream.accept(write_response=False)
        else:
            await stream.accept(
                [
                    ("Upgrade", "DERP"),
                    ("Connection", "Upgrade"),
                    ("Derp-Version", str(F.PROTOCOL_VERSION)),
                    ("Derp-Public-Key", self.key_header_prefix + self.public.hex()),
                ]
            )
        await self.serve_stream(stream, remote, not_ideal=not_ideal)
        return None

    # ---- one client ---------------------------------------------------------------------

    async def serve_stream(
        self,
        stream: ByteStream,
        remote: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int] | None,
        *,
        not_ideal: bool = False,
    ) -> None:
        """Run a DERP connection on an already-upgraded stream until it closes."""
        if not self._admit_rate():
            self.counters.fail("accept_rate")
            stream.abort()
            return
        self.counters.accepts += 1
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            await self._serve(stream, remote, not_ideal)
        finally:
            if task is not None:
                self._tasks.discard(task)
            stream.close()

    def _admit_rate(self) -> bool:
        """Token bucket over new connections; stops connection floods from costing logins."""
        if math.isinf(self.accept_limit):
            return True
        now = asyncio.get_running_loop().time()
        if self._accept_at is not None:
            self._accept_tokens = min(
                float(self.accept_burst),
                self._accept_tokens + (now - self._accept_at) * self.accept_limit,
            )
        self._accept_at = now
        if self._accept_tokens < 1.0:
            return False
        self._accept_tokens -= 1.0
        return True

    async def _serve(
        self,
        stream: ByteStream,
        remote: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int] | None,
        not_ideal: bool,
    ) -> None:
        # This frame lives as long as the connection: keep its locals few (idle memory).
        fb = F.FrameBuffer(F.MAX_LOGIN_FRAME)
        login = await self._login(stream, remote, fb)
        if login is None:
            return
        key, mesh, prober = login
        del login
        cid = self._register(stream, key, mesh, prober, not_ideal, remote)
        try:
            reader = self._take_over(stream, cid, fb) if isinstance(stream, RawStream) else None
            if reader is None:
                await self._read_loop(stream, cid, key, fb)
                return
            del fb
            err = await reader.done
            if err is not None:
                self.counters.protocol_errors += 1
                log.debug("derp: closing %s: %s", NodePublic(key).short(), err)
        finally:
            await self._stop_sink(cid)
            self.relay.remove_conn(cid)
            self._flush_ready()

    async def _login(
        self,
        stream: ByteStream,
        remote: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int] | None,
        fb: F.FrameBuffer,
    ) -> tuple[bytes, bool, bool] | None:
        """ServerKey, ClientInfo, admission: (client key, mesh peer, prober) or None."""
        key = b""
        try:
            async with asyncio.timeout(self.login_timeout):
                stream.write(self.relay.server_key_frame())
                await stream.drain()
                ftype, payload = await _read_frame(stream, fb)
                if ftype != F.FrameType.CLIENT_INFO:
                    raise HandshakeError("first frame is not ClientInfo")
                key, info = self.relay.open_client_info(payload)
                mesh = self.relay.check_mesh_key(info)
                if not mesh and self.verify_client is not None:
                    await self._verify(key, info, remote)
        except TimeoutError:
            self.counters.fail("timeout")
            return None
        except AdmissionError as exc:
            self.counters.fail(exc.reason)
            log.info("derp: refused %s: %s", NodePublic(key).short(), exc.reason)
            return None
        except (DERPError, ValueError) as exc:
            self.counters.fail("handshake")
            log.debug("derp: login failed: %s", exc)
            return None
        except (ConnectionError, asyncio.IncompleteReadError):
            self.counters.fail("eof")
            return None
        return key, mesh, info.is_prober

    def _register(
        self,
        stream: ByteStream,
        key: bytes,
        mesh: bool,
        prober: bool,
        not_ideal: bool,
        remote: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int] | None,
    ) -> int:
        """Add the logged-in connection to the core, give it a sink, send ServerInfo."""
        conn = self.relay.add_conn(
            key, mesh=mesh, prober=prober, not_ideal=not_ideal, remote=remote
        )
        self.counters.logins += 1
        cid = conn.id
        # 60 s plus up to 5 s of per-connection jitter, scaled if keepalive is changed.
        interval = self.keepalive * (1 + random.random() * F.KEEP_ALIVE_JITTER / F.KEEP_ALIVE)
        sink = _Sink(
            stream.writelines,
            stream.transport,
            stream.drain,
            stream.abort,
            MESH_WRITE_TIMEOUT if mesh else self.write_timeout,
            interval,
            # Raw streams write one part as is (no join); WebSocket ones frame every write.
            stream.write if isinstance(stream, RawStream) else None,
        )
        self._sinks[cid] = sink
        sink.write([self.relay.server_info_frame(key, self._rand(24))])
        self._check_blocked(cid, sink)
        self._arm_keepalive(cid, sink)
        self._flush_ready()
        if not sink.blocked:
            self.relay.set_direct(cid, True)
        return cid

    def _take_over(self, stream: RawStream, cid: int, fb: F.FrameBuffer) -> DERPReader | None:
        """Read the connection with a DERPReader from now on (None: the stream said no;
        then ``fb`` still holds every byte received so far)."""
        readers: list[DERPReader] = []

        def make(old: asyncio.BaseProtocol) -> DERPReader:
            r = DERPReader(
                old,
                self.relay,
                cid,
                self._flush_ready,
                transport,
                self._on_stall,
                max_stall=self.max_stall,
            )
            readers.append(r)
            return r

        if not isinstance(stream.transport, asyncio.ReadTransport):
            return None
        transport: asyncio.ReadTransport = stream.transport
        pending = fb.take_pending()
        taken = stream.take_over(make)
        if taken is None:
            fb.feed(pending)
            return None
        reader = readers[0]
        reader.feed(pending + taken[0])  # frames that arrived with ClientInfo come first
        if taken[1]:
            reader.eof_received()
        return reader

    async def _read_loop(self, stream: ByteStream, cid: int, key: bytes, fb: F.FrameBuffer) -> None:
        """The generic read side (WebSocket streams): FrameBuffer and handle_frame."""
        fb.max_frame = F.MAX_SERVER_FRAME
        loop = asyncio.get_running_loop()
        relay = self.relay
        sink = self._sinks[cid]
        try:
            # Frames that arrived with ClientInfo are already in fb.
            while True:
                now = loop.time()
                n = 0
                for ftype, payload in fb.frames():
                    relay.handle_frame(cid, ftype, payload, now)
                    n += 1
                    if n == FLUSH_EVERY:
                        self._flush_ready()
                        n = 0
                if relay.has_output:
                    self._flush_ready()
                if sink.dead:
                    return
                data = await stream.read(READ_CHUNK)
                if not data:
                    return
                fb.feed(data)
        except DERPError as exc:
            self.counters.protocol_errors += 1
            log.debug("derp: closing %s: %s", NodePublic(key).short(), exc)
        except (ConnectionError, OSError):
            pass

    async def _verify(
        self,
        key: bytes,
        info: ClientInfo,
        remote: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int] | None,
    ) -> None:
        assert self.verify_client is not None
        token = CLIENT_SOURCE.set(str(remote[0]) if remote else "")
        try:
            async with asyncio.timeout(VERIFY_TIMEOUT):
                ok = await self.verify_client(NodePublic(key), info)
        except TimeoutError:
            raise AdmissionError("verify_timeout") from None
        except Exception as exc:  # a failing hook refuses: admission fails closed
            log.warning("derp: verify_client failed: %r", exc)
            raise AdmissionError("verify_error") from exc
        finally:
            CLIENT_SOURCE.reset(token)
        if not ok:
            raise AdmissionError("unknown_node")

    def _arm_keepalive(self, cid: int, sink: _Sink, delay: float | None = None) -> None:
        if sink.interval is None:
            return
        loop = asyncio.get_running_loop()
        sink.timer = loop.call_later(
            sink.interval if delay is None else delay, self._keepalive, cid
        )

    def _keepalive(self, cid: int) -> None:
        """Timer: send KeepAlive after ``interval`` of silence toward the client (1.5)."""
        sink = self._sinks.get(cid)
        if sink is None or sink.dead or sink.interval is None:
            return
        idle = asyncio.get_running_loop().time() - sink.last_write
        if idle >= sink.interval:
            sink.write([KEEP_ALIVE_FRAME])
            self._check_blocked(cid, sink)
            idle = 0.0
        self._arm_keepalive(cid, sink, sink.interval - idle)

    def _check_blocked(self, cid: int, sink: _Sink) -> bool:
        """Start draining, with a deadline, once the transport holds too much."""
        if sink.buffered() <= WRITE_HIGH_WATER:
            return False
        sink.blocked = True
        self.relay.set_direct(cid, False)  # packets wait in the bounded queue meanwhile
        if sink.drainer is None:
            sink.drainer = asyncio.create_task(self._drain(cid, sink))
        return True

    async def _drain(self, cid: int, sink: _Sink) -> None:
        """Wait for a backed-up transport; a client that stops reading is closed."""
        try:
            async with asyncio.timeout(sink.write_timeout):
                sink.commit()
                await sink.drain()
        except TimeoutError:
            self.counters.write_timeouts += 1
            self.relay.stats.drop("write_timeout")
            sink.dead = True
            sink.close()
            self._wake(cid, sink)
            return
        except (ConnectionError, OSError):
            sink.dead = True
            sink.close()
            self._wake(cid, sink)
            return
        finally:
            sink.drainer = None
        sink.blocked = False
        self._flush(cid)
        if not sink.blocked:
            self._wake(cid, sink)

    def _on_stall(self, cid: int, reader: DERPReader) -> None:
        """A sender stopped reading in front of a packet for ``cid``: wake it on drain."""
        sink = self._sinks.get(cid)
        if sink is None or not sink.blocked or sink.dead:
            self.relay.release_hold(cid)  # nothing to wait for: never stall on it again
            asyncio.get_running_loop().call_soon(reader.unstall)
            return
        if sink.waiters is None:
            sink.waiters = []
        sink.waiters.append(reader.unstall)

    def _wake(self, cid: int, sink: _Sink) -> None:
        """Senders waiting for ``cid`` read on (if it died, they stop waiting for it)."""
        if sink.dead:
            self.relay.release_hold(cid)
        waiters, sink.waiters = sink.waiters, None
        for wake in waiters or ():
            wake()

    async def _stop_sink(self, cid: int) -> None:
        sink = self._sinks.pop(cid, None)
        if sink is None:
            return
        if sink.timer is not None:
            sink.timer.cancel()
        sink.dead = True
        self._wake(cid, sink)
        task = sink.drainer
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def _flush(self, cid: int) -> None:
        """Write a connection's queued frames now unless its transport is backed up."""
        sink = self._sinks.get(cid)
        q = self.relay.queue_of(cid)
        if sink is None or q is None:
            return
        if sink.blocked:
            return  # the drain task flushes once the transport has room
        # Direct output first: it is older than anything the queue took while blocked.
        out = self.relay.take_out(cid)
        if out:
            sink.write(out)
            self._check_blocked(cid, sink)
        while len(q) and not sink.blocked:
            sink.write(q.pop_batch(256))
            self._check_blocked(cid, sink)
        if not sink.blocked:
            self.relay.set_direct(cid, True)
        self.relay.pong_sent(cid)

    def _flush_ready(self) -> None:
        for cid in self.relay.take_ready():
            self._flush(cid)
        for cid in self.relay.take_closes():
            sink = self._sinks.get(cid)
            if sink is not None:
                sink.close()

    def revoke(self, admits: Callable[[NodePublic], bool]) -> int:
        """Close every client connection (not mesh peers) whose key ``admits`` refuses now:
        admission is checked at login, and this re-checks it for connections already in
        (an expired or deleted node must lose the relay, issue #12). Returns how many."""
        n = 0
        for cid, conn in list(self.relay.conns.items()):
            if conn.mesh or admits(NodePublic(conn.key)):
                continue
            sink = self._sinks.get(cid)
            if sink is not None:
                sink.close()
                self.counters.revoked += 1
                n += 1
        return n

    def broadcast_health(self, problem: str) -> None:
        """Show ``problem`` as a health warning on every connected client ("" clears it)."""
        self.relay.broadcast_health(problem)
        self._flush_ready()

    # ---- mesh ---------------------------------------------------------------------------

    def add_mesh_peer(
        self, url: str, *, ssl: ssl_module.SSLContext | None = None, server_name: str | None = None
    ) -> None:
        """Keep a watch-conns link to another relay of this region (needs the mesh key)."""
        if self.relay.mesh_key is None:
            raise ValueError("mesh peers need a mesh key")
        self._mesh_tasks.append(
            asyncio.create_task(self._mesh_link(url, ssl, server_name), name=f"derp-mesh {url}")
        )

    async def _mesh_link(
        self, url: str, ssl: ssl_module.SSLContext | None, server_name: str | None
    ) -> None:
        assert self.relay.mesh_key is not None
        info = ClientInfo(mesh_key=self.relay.mesh_key.hex())
        while True:
            client = DERPClient(self.private, url, ssl=ssl, server_name=server_name, info=info)
            fwd = None
            try:
                await client.connect()
                if client.server_key == self.public:
                    log.info("derp: mesh peer %s is ourselves; not meshing", url)
                    await client.close()
                    return
                client.watch_conns()
                fwd = self.relay.add_forwarder()
                assert client.transport is not None
                sink = _Sink(
                    client.write_raw,
                    client.transport,
                    client.drain,
                    client.abort,
                    MESH_WRITE_TIMEOUT,
                    None,  # the peer relay keeps this link alive, as for any client
                )
                self._sinks[fwd.id] = sink
                try:
                    while True:
                        ev = await client.recv()
                        if isinstance(ev, F.PeerPresent):
                            self.relay.forwarder_present(fwd.id, ev.key)
                        elif isinstance(ev, F.PeerGone):
                            self.relay.forwarder_gone(fwd.id, ev.key)
                        self._flush_ready()
                        if sink.dead:
                            break
                finally:
                    await self._stop_sink(fwd.id)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.info("derp: mesh link to %s: %r", url, exc)
            finally:
                if fwd is not None:
                    await self._stop_sink(fwd.id)
                    self.relay.remove_forwarder(fwd.id)
                    self._flush_ready()
                await client.close()
            await asyncio.sleep(MESH_RETRY)

    # ---- lifecycle ----------------------------------------------------------------------

    async def close(self) -> None:
        """Stop mesh links and close every client connection."""
        for t in self._mesh_tasks:
            t.cancel()
        for sink in list(self._sinks.values()):
            sink.close()
        pending = [*self._mesh_tasks, *self._tasks]
        if pending:
            await asyncio.wait(pending, timeout=2.0)
        self._mesh_tasks.clear()


async def _read_frame(stream: ByteStream, fb: F.FrameBuffer) -> tuple[int, bytes]:
    while True:
        frames = fb.frames()
        try:
            frame = next(frames, None)
        finally:
            frames.close()
        if frame is not None:
            return frame
        data = await stream.read(READ_CHUNK)
        if not data:
            raise asyncio.IncompleteReadError(b"", None)
        fb.feed(data)
