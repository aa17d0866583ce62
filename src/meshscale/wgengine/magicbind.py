"""MagicBind, the magicsock driver: one UDP socket shared by WireGuard, disco and STUN, plus DERP.

It is the WireGuard engine's ``Bind`` (``bind.Bind``). The engine's threads call
``send``/``receive``; the asyncio loop runs the core's timer and the DERP connections. All
protocol decisions are in ``meshscale.magicsock.Conn`` (the core); this module only moves
bytes and guards the core with one lock.

Endpoints: WireGuard sees every peer at a synthetic endpoint ``("nodekey:<hex>", 0)``; the
core picks the real path per datagram (best UDP address, DERP, or both while probing), like
tailscale's magicsock does with its per-peer endpoint objects. A datagram from a source the
core cannot attribute is handed up with its real address; once WireGuard's receiver index
names the peer, the source is bound to it and the synthetic endpoint is used again.

User pings (``meshscale ping``) are the core's (``Conn.ping`` -> ``PingResult`` event).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import os
import select
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from meshscale import disco
from meshscale.derp import frames as F
from meshscale.derp.client import ClientEvent
from meshscale.derphttp import DERPRegions
from meshscale.disco import AddrPort
from meshscale.io import netmark
from meshscale.io.timer import LoopTimer
from meshscale.io.udp import UDPSocket
from meshscale.key import DiscoPrivate, DiscoPublic, NodePrivate, NodePublic
from meshscale.magicsock import Conn, Event, FrozenDERPMap, PeerConfig, PingResult, Report
from meshscale.magicsock.hardnat import ProbeBudget
from meshscale.tailcfg import DERPMap, to_json
from meshscale.wireguard import Device, Endpoint

from .bind import RX_BATCH, BindClosed

log = logging.getLogger("meshscale.magicsock")

SYNTHETIC_PREFIX = "nodekey:"
# Seconds a deadline armed by the engine's threads may wait to be seen (io.timer): the old
# tick's period, for the STUN answers that end a netcheck early.
POKE_INTERVAL = 0.1
PROBE_INTERVAL = 1.0  # seconds between early probes of one peer (see _maybe_probe)
MAX_SRC_CACHE = 4096  # parsed source addresses kept (a flood of sources only resets it)
MAX_DERP_QUEUE = 4096  # WireGuard datagrams from DERP waiting for the RX thread (memory bound)


def peer_endpoint(key: NodePublic) -> Endpoint:
    return (SYNTHETIC_PREFIX + key.hex(), 0)


def endpoint_peer(ep: Endpoint) -> NodePublic | None:
    if ep[0].startswith(SYNTHETIC_PREFIX):
        return NodePublic.from_hex(ep[0][len(SYNTHETIC_PREFIX) :])
    return None


def _plain_derp() -> bool:
    return os.environ.get("TS_DEBUG_USE_DERP_HTTP", "") in ("1", "true")


def _derp_tls() -> ssl.SSLContext | None:
    """TLS for DERP connections (None when plain HTTP is forced). The certificate is not
    verified: we dial the region's IP literal, and what crosses DERP is WireGuard- or
    disco-encrypted end to end, so a false relay can only drop it."""
    if _plain_derp():
        return None
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def derp_url(node: dict[str, Any]) -> str:
    """Where to dial a DERP node. TLS unless TS_DEBUG_USE_DERP_HTTP is set (upstream's knob)."""
    host = node.get("IPv4") or node.get("HostName") or ""
    if ":" in host:
        host = f"[{host}]"
    plain = _plain_derp()
    port = int(node.get("DERPPort") or (80 if plain else 443))
    return f"{'http' if plain else 'https'}://{host}:{port}/derp"


class MagicBind:
    """See the module docstring. Create, ``start(loop)``, then hand to the Engine."""

    def __init__(
        self,
        node_key: NodePrivate,
        disco_key: DiscoPrivate,
        *,
        on_event: Callable[[Event], None],
        rand: Callable[[int], bytes] = os.urandom,
        clock: Callable[[], float] = time.monotonic,
        hard_nat: ProbeBudget | None = None,
    ) -> None:
        """``clock``: monotonic seconds, the event loop's (``loop.time()``) in production;
        ``hard_nat``: the hard-NAT probe budget (None: the default, on)."""
        self.node_key = node_key
        self.disco_key = disco_key
        self.on_event = on_event
        self.rand = rand
        self._clock = clock
        self.hard_nat = hard_nat
        self.core = Conn(node_key.public(), disco_key, rand=rand, local_port=0, hard_nat=hard_nat)
        # Hard-NAT probing's extra sockets (core ids -> plain non-blocking sockets); the RX
        # thread reads the immutable view.
        self._aux: dict[int, socket.socket] = {}
        self._aux_view: tuple[tuple[int, socket.socket], ...] = ()
        self.lock = threading.RLock()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.device: Device | None = None  # the engine's, for receiver-index lookups
        self._sock: UDPSocket | None = None
        self._src_cache: dict[tuple[str, int], AddrPort] = {}
        self._disco_peers: dict[DiscoPublic, NodePublic] = {}
        self._probed: dict[NodePublic, float] = {}
        self.errors: dict[str, int] = {}  # unexpected failures by place (debug API)
        self._peer_eps: dict[bytes, Endpoint] = {}  # node key bytes -> synthetic endpoint
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._closed = False
        self._derp_in: deque[tuple[bytes, Endpoint]] = deque()
        self._derp_out: list[tuple[int, NodePublic, bytes]] = []
        self._derp_flush_scheduled = False
        self.derp: DERPRegions | None = None
        self.derp_map = DERPMap()
        self.derp_connected: set[int] = set()
        self._timer: LoopTimer | None = None
        self._pings: dict[bytes, asyncio.Future[tuple[float, str, int]]] = {}
        self.region_codes: dict[int, str] = {}
        self.report: Report | None = None

    # ---- Bind protocol (engine threads) ----

    def open(self, port: int) -> int:
        new: UDPSocket | None = None
        try:
            new = UDPSocket.bind("::", port)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise
        if new is None:  # no IPv6 in this namespace: plain IPv4
            new = UDPSocket.bind("0.0.0.0", port)
        old, self._sock = self._sock, new
        bound = int(new.getsockname()[1])
        with self.lock:
            self.core.note_network_change(self._clock(), local_port=bound)
            self._flush_locked()
        if old is not None:
            old.close()
        self._wake()
        self._poke()
        return bound

    def send(self, ep: Endpoint, messages: list[list[bytes]]) -> None:
        # Each message is a list of buffers forming one datagram (scatter-gather).
        peer = endpoint_peer(ep)
        if peer is None:
            for parts in messages:
                self._sendto(parts[0] if len(parts) == 1 else b"".join(parts), ep)
            return
        datagrams = [parts[0] if len(parts) == 1 else b"".join(parts) for parts in messages]
        try:
            with self.lock:
                self.core.send_batch(peer, datagrams, self._clock())
                self._flush_locked()
            self._poke()  # sending arms the heartbeat and discovery pings
        except Exception:  # never let one bad batch kill the engine's TX thread
            self.errors["send"] = self.errors.get("send", 0) + 1
            if self.errors["send"] == 1:
                log.exception("magicsock: send")

    def send_one(self, ep: Endpoint, data: bytes) -> None:
        self.send(ep, [[data]])

    def receive(self) -> list[tuple[bytes | memoryview, Endpoint]]:
        while True:
            if self._closed:
                raise BindClosed
            sock = self._sock
            out = self._take_derp()
            if out:
                return out
            if sock is None:
                select.select([self._wake_r], [], [], 0.5)
                self._drain_wake()
                continue
            aux = self._aux_view
            try:
                fds = [sock.fileno(), self._wake_r, *(s.fileno() for _, s in aux)]
                ready, _, _ = select.select(fds, [], [], 0.5)
            except (OSError, ValueError):  # also an extra socket closed under us
                ready = []
                if self._closed or sock is not self._sock:
                    raise BindClosed from None
            if self._wake_r in ready:
                self._drain_wake()
            if aux and len(ready) > (self._wake_r in ready) + (sock.fileno() in ready):
                out = self._receive_aux(aux, ready)
                if out:
                    return out
            if sock.fileno() not in ready:
                continue
            try:
                batch = sock.recv_batch(RX_BATCH)  # does not block: the socket is readable
            except OSError:
                if self._closed or sock is not self._sock:
                    raise BindClosed from None
                continue
            try:
                out = self._classify(batch)
            except Exception:  # never let one bad batch kill the engine's RX thread
                self.errors["classify"] = self.errors.get("classify", 0) + 1
                if self.errors["classify"] == 1:
                    log.exception("magicsock: receive")
                continue
            if out:
                return out

    def close(self) -> None:
        self._closed = True
        self._wake()
        if self._sock is not None:
            self._sock.close()
        with self.lock:
            self._sync_aux(frozenset(), [])

    # ---- hard-NAT probing's extra sockets ----

    def _receive_aux(
        self, aux: tuple[tuple[int, socket.socket], ...], ready: list[int]
    ) -> list[tuple[bytes | memoryview, Endpoint]]:
        out: list[tuple[bytes | memoryview, Endpoint]] = []
        for sid, s in aux:
            try:
                if s.fileno() not in ready:
                    continue
            except OSError:
                continue
            batch: list[tuple[memoryview, tuple[str, int]]] = []
            for _ in range(RX_BATCH):
                try:
                    data, addr = s.recvfrom(65535)
                except OSError:  # drained (EAGAIN), or closed under us
                    break
                batch.append((memoryview(data), addr))
            if batch:
                try:
                    out += self._classify(batch, sid)
                except Exception:
                    self.errors["classify"] = self.errors.get("classify", 0) + 1
        return out

    def _sync_aux(self, want: frozenset[int], out: list[tuple[int, bytes, AddrPort]]) -> None:
        """Open/close extra sockets to match the core's set, then send their datagrams
        (lock held)."""
        changed = False
        for sid in [sid for sid in self._aux if sid not in want]:
            self._aux.pop(sid).close()
            changed = True
        for sid, data, dst in out:
            s = self._aux.get(sid)
            if s is None and sid in want:
                try:
                    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                    netmark.apply(s)
                    s.bind(("0.0.0.0", 0))
                    s.setblocking(False)
                except OSError:  # out of descriptors or ports: fewer probes, not a failure
                    self.errors["aux_socket"] = self.errors.get("aux_socket", 0) + 1
                    continue
                self._aux[sid] = s
                changed = True
            if s is not None:
                with contextlib.suppress(OSError):
                    s.sendto(data, (str(dst.ip), dst.port))
        if changed:
            self._aux_view = tuple(self._aux.items())
            self._wake()  # the RX thread selects on the new set

    # ---- RX helpers ----

    def _classify(
        self, batch: list[tuple[memoryview, tuple[str, int]]], sock: int = 0
    ) -> list[tuple[bytes | memoryview, Endpoint]]:
        now = self._clock()
        out: list[tuple[bytes | memoryview, Endpoint]] = []
        srcs = self._src_cache
        rest: list[tuple[memoryview, tuple[str, int]]] = []
        keypairs = self.device.keypairs if self.device is not None else {}
        eps = self._peer_eps
        for view, addr in batch:
            # Hot path: a WireGuard transport message names its keypair by our receiver
            # index, and so its peer; the core has nothing to decide for it. (A forged
            # index fails decryption, so it cannot move the peer's endpoint.)
            if len(view) >= 32 and view[0] == 4 and not view[1] and not view[2] and not view[3]:
                kp = keypairs.get(int.from_bytes(view[4:8], "little"))
                if kp is not None:
                    pk = kp.peer.public_key
                    ep = eps.get(pk)
                    if ep is None:
                        ep = eps[pk] = peer_endpoint(NodePublic(pk))
                    out.append((view, ep))
                    continue
            rest.append((view, addr))
        if not rest:
            return out
        with self.lock:
            for view, addr in rest:
                data = bytes(view)  # the socket reuses its receive buffer
                src = srcs.get(addr)
                if src is None:
                    try:
                        ip = ipaddress.ip_address(addr[0].split("%", 1)[0])
                    except ValueError:
                        continue
                    src = AddrPort(ip, int(addr[1]))
                    if len(srcs) >= MAX_SRC_CACHE:
                        srcs.clear()
                    srcs[addr] = src
                self.core.receive_datagram(data, src, now, sock)
                if disco.looks_like_disco(data):
                    self._maybe_probe(data, now)
            for data, wsrc in self.core.received_wireguard():
                if wsrc.peer is not None:
                    out.append((data, peer_endpoint(wsrc.peer)))
                    continue
                assert wsrc.addr is not None
                peer = self._peer_by_index(data)
                if peer is not None:
                    self.core.note_wireguard_source(peer, wsrc.addr)
                    out.append((data, peer_endpoint(peer)))
                else:
                    out.append((data, (str(wsrc.addr.ip), wsrc.addr.port)))
            self._flush_locked()
        self._poke()  # disco and STUN answers move the core's deadlines
        return out

    def _maybe_probe(self, data: bytes, now: float) -> None:
        """A peer without a trusted direct path reached us over UDP: its NAT is open towards
        us now, so probe all its candidates at once instead of waiting out the 5 s
        discovery interval. At most once per PROBE_INTERVAL per peer (lock held)."""
        try:
            peer = self._disco_peers.get(disco.source(data))
        except ValueError:
            return
        if peer is None or now - self._probed.get(peer, -PROBE_INTERVAL) < PROBE_INTERVAL:
            return
        st = self.core.peer_status(peer, now)
        if st is None or st.trusted:
            return
        self._probed[peer] = now
        self.core.ping(peer, now)  # its PingResult has no waiter and is dropped

    def _peer_by_index(self, data: bytes) -> NodePublic | None:
        """The peer a transport or response message is for, by our receiver index."""
        dev = self.device
        if dev is None or len(data) < 16 or data[0] not in (2, 4):
            return None
        off = 4 if data[0] == 4 else 8
        idx = int.from_bytes(data[off : off + 4], "little")
        kp = dev.keypairs.get(idx) if data[0] == 4 else None
        p = kp.peer if kp is not None else dev.handshakes.get(idx)
        return NodePublic(p.public_key) if p is not None else None

    def _take_derp(self) -> list[tuple[bytes | memoryview, Endpoint]]:
        out: list[tuple[bytes | memoryview, Endpoint]] = []
        while self._derp_in:
            out.append(self._derp_in.popleft())
        return out

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._wake_w, b"x")

    def _drain_wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            os.read(self._wake_r, 4096)

    # ---- TX helpers (any thread, lock held) ----

    def _sendto(self, data: bytes, ep: Endpoint) -> None:
        sock = self._sock
        if sock is None:
            return
        try:
            sock.send_batch(ep, [[data]])
        except OSError:
            pass  # unreachable paths are the core's business (disco pings find new ones)

    def _flush_locked(self) -> None:
        out = self.core.datagrams_to_send()
        sock = self._sock
        if out and sock is not None:
            # Consecutive datagrams to one address go out in one GSO send.
            i = 0
            while i < len(out):
                addr = out[i][1]
                j = i + 1
                while j < len(out) and out[j][1] == addr:
                    j += 1
                try:
                    sock.send_batch((str(addr.ip), addr.port), [[d] for d, _ in out[i:j]])
                except OSError:
                    pass
                i = j
        aux = self.core.aux_datagrams_to_send()
        if aux or self._aux:
            want = self.core.aux_sockets()
            if aux or want != self._aux.keys():
                self._sync_aux(want, aux)
        derp = self.core.derp_to_send()
        if derp and self.loop is not None:
            self._derp_out += derp
            if not self._derp_flush_scheduled:
                self._derp_flush_scheduled = True
                self.loop.call_soon_threadsafe(self._flush_derp)
        while (ev := self.core.next_event()) is not None:
            if self.loop is not None:
                self.loop.call_soon_threadsafe(self._handle_event, ev)

    # ---- asyncio side ----

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start the core and its timer on ``loop`` (call on the loop's thread)."""
        self.loop = loop
        self._timer = LoopTimer(loop, self._get_timer, self._on_timer, interval=POKE_INTERVAL)
        with self.lock:
            self.core.start(self._clock())
            self._flush_locked()
        self._rearm()

    async def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self.derp is not None:
            await self.derp.close()
        for fut in self._pings.values():
            if not fut.done():
                fut.cancel()

    def _get_timer(self) -> float | None:
        with self.lock:
            return self.core.get_timer()

    def _on_timer(self, now: float) -> None:
        try:
            with self.lock:
                t = self.core.get_timer()
                if t is not None and t <= now:
                    self.core.handle_timer(now)
                self._flush_locked()
        except Exception:  # a bug in one round must not stop path maintenance
            log.exception("magicsock timer")

    def _rearm(self) -> None:
        """After an input on the loop's thread: the timer at the core's next deadline."""
        if self._timer is not None:
            self._timer.rearm()

    def _poke(self) -> None:
        """After an input on an engine thread (cheap; see io.timer)."""
        if self._timer is not None:
            self._timer.poke()

    def _flush_derp(self) -> None:
        self._derp_flush_scheduled = False
        with self.lock:
            out, self._derp_out = self._derp_out, []
        if self.derp is None:
            return
        for region, peer, payload in out:
            if region in self.derp.urls:
                self.derp.send(region, peer, payload)

    def _handle_event(self, ev: Event) -> None:
        from meshscale.magicsock import HomeDERPChanged, NetcheckReportReady

        if (
            isinstance(ev, HomeDERPChanged)
            and self.derp is not None
            and ev.region in self.derp.urls
        ):
            self.derp.set_home(ev.region)
        if isinstance(ev, NetcheckReportReady):
            self.report = ev.report
        if isinstance(ev, PingResult):
            self._ping_result(ev)
            return
        self.on_event(ev)

    def _on_derp_event(self, region: int, ev: ClientEvent) -> None:
        if isinstance(ev, F.RecvPacket):
            src = NodePublic(ev.src)
            now = self._clock()
            with self.lock:
                self.core.receive_derp(ev.packet, src, region, now)
                wg = self.core.received_wireguard()
                self._flush_locked()
            self._rearm()
            for data, wsrc in wg:
                if len(self._derp_in) < MAX_DERP_QUEUE and wsrc.peer is not None:
                    self._derp_in.append((data, peer_endpoint(wsrc.peer)))
            if wg:
                self._wake()
        else:
            from meshscale.derp.client import Connected

            if isinstance(ev, Connected):
                self.derp_connected.add(region)
            elif isinstance(ev, F.PeerGone):
                pass

    # ---- configuration (event loop) ----

    def set_derp_map(self, dm: DERPMap) -> None:
        if dm == self.derp_map:
            return
        self.derp_map = dm
        raw = to_json(dm)
        urls: dict[int, str] = {}
        for rid, region in (raw.get("Regions") or {}).items():
            nodes = [n for n in region.get("Nodes") or [] if not n.get("STUNOnly")]
            if nodes:
                urls[int(rid)] = derp_url(nodes[0])
            self.region_codes[int(rid)] = str(region.get("RegionCode") or rid)
        if self.derp is None:
            self.derp = DERPRegions(self.node_key, urls, self._on_derp_event, ssl=_derp_tls())
        else:
            self.derp.urls = urls
        with self.lock:
            self.core.set_derp_map(FrozenDERPMap.from_json(raw), self._clock())
            self._flush_locked()
        self._rearm()

    async def set_node_key(self, key: NodePrivate) -> None:
        """A new node key (after logout): a fresh core and fresh DERP logins."""
        if self.derp is not None:
            await self.derp.close()
            self.derp = None
        self.derp_map = DERPMap()
        with self.lock:
            port = self.core.local_port
            self.node_key = key
            self.core = Conn(key.public(), self.disco_key, rand=self.rand, local_port=port,
                             hard_nat=self.hard_nat)  # fmt: skip
            self.core.start(self._clock())
            self._flush_locked()
        self._rearm()

    def set_peers(self, peers: list[PeerConfig]) -> None:
        self._disco_peers = {p.disco_key: p.node_key for p in peers}
        with self.lock:
            self.core.set_peers(peers, self._clock())
            self._flush_locked()
        self._rearm()

    def set_local_addresses(self, ips: list[ipaddress.IPv4Address | ipaddress.IPv6Address]) -> None:
        with self.lock:
            self.core.set_local_addresses(ips, self._clock())
            self._flush_locked()
        self._rearm()

    def set_portmapped(self, addr: AddrPort | None) -> None:
        """Advertise the gateway's mapping of our port (None: there is none)."""
        with self.lock:
            self.core.set_portmapped(addr, self._clock())
            self._flush_locked()
        self._rearm()

    def note_network_change(self) -> None:
        """Our addresses changed (roaming): forget paths, re-STUN, and redial DERP at once,
        since its TCP connections may still be bound to an address we no longer have."""
        with self.lock:
            self.core.note_network_change(self._clock())
            self._flush_locked()
        self._rearm()
        old = self.derp
        if old is not None and self.loop is not None:
            self.derp = DERPRegions(
                self.node_key, dict(old.urls), self._on_derp_event, ssl=_derp_tls()
            )
            if self.core.home_derp in old.urls:
                self.derp.set_home(self.core.home_derp)
            self.loop.create_task(old.close())

    # ---- user pings ----

    async def ping(self, peer: NodePublic, wait: float) -> tuple[float, str, int]:
        """Disco-ping ``peer`` (the core probes DERP and every candidate, as upstream's
        ``tailscale ping``): (latency s, "ip:port" or "", DERP region or 0).

        Raises TimeoutError when no Pong came in ``wait`` seconds (or the core gave up).
        """
        assert self.loop is not None
        with self.lock:
            ping_id = self.core.ping(peer, self._clock())
            self._flush_locked()
        self._rearm()
        if ping_id is None:
            raise TimeoutError
        fut: asyncio.Future[tuple[float, str, int]] = self.loop.create_future()
        self._pings[ping_id] = fut
        try:
            async with asyncio.timeout(wait):
                return await fut
        finally:
            self._pings.pop(ping_id, None)

    def _ping_result(self, ev: PingResult) -> None:
        fut = self._pings.get(ev.ping_id)
        if fut is None or fut.done():
            return
        if ev.latency is None:
            fut.set_exception(TimeoutError())
            return
        via = ""
        if ev.addr is not None:
            via = f"[{ev.addr.ip}]:{ev.addr.port}" if ev.addr.ip.version == 6 else (
                f"{ev.addr.ip}:{ev.addr.port}")  # fmt: skip
        fut.set_result((ev.latency, via, ev.region))
