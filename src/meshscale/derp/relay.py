"""DERP routing core: who is connected where, per-client queues, mesh forwarding, PeerGone.

Performs no I/O. Driven by: connection registration (``add_conn``/``remove_conn``), frames
from logged-in clients (``handle_frame``, with ``now`` for rate limits), and mesh links
(``add_forwarder``/``forwarder_present``/``forwarder_gone``/``remove_forwarder``). Outputs:
each connection's ``SendQueue`` (frames as data, drained by the driver's writer for that
connection), ``take_ready()`` (queues that became non-empty) and ``take_closes()``.

Routing (docs/protocol/derp-disco-stun.md §1.6, 1.10)::

    SendPacket(dst) from C:  local active conn for dst?  -> its queue as RecvPacket(C.key)
                             else a mesh forwarder?      -> forwarder queue as ForwardPacket
                             else drop ("unknown_dest"), PeerGone(dst, NotHere) to C if disco
    ForwardPacket from mesh: local only, never re-forwarded (one hop)

Duplicate keys: every connection is kept; the newest is active, and a duplicate that sends
becomes active ("last writer wins"). When a key leaves the whole region, every connection
that received packets from it gets PeerGone(Disconnected); mesh watchers get PeerPresent on
every new connection and PeerGone when the last connection of a key goes.

Queues: data and disco packets each get ``queue_depth`` slots (32, as derper); when full the
oldest packet is dropped (head drop), so a slow reader only ever loses its own packets and
never stalls the sender. Control frames (pongs, PeerGone, PeerPresent) have their own bound.

Direct output (the fast path): a driver whose transport for a connection has room calls
``set_direct(cid, True)``; packets for it then go to an unbounded list taken by ``take_out``
(header and packet parts, no queue), and the driver promises to take it after every
``handle_buffer``/``handle_frame`` call. Once the transport backs up the driver turns direct
output off, and packets wait in the bounded queue again. ``handle_buffer`` parses and routes
every complete frame of a read buffer in one call, forwarding SendPackets by rewriting them
into RecvPackets in the buffer itself (runs.py: same size, only type and key differ); each run
of consecutive frames to one destination becomes one part: a view of the buffer when it is
``VIEW_MIN`` bytes or more, else a copy, so that a view never pins a large read buffer.

Holding senders (bounded backpressure): turning direct output off also marks the connection
``hold``; ``handle_buffer(..., hold=True)`` then stops in front of a packet for it and names
it, so the driver can stop reading that sender until the destination drains, instead of
dropping. The driver clears ``hold`` (``release_hold``) when it will not wait any longer;
packets for the connection are then queued and head-dropped as above.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from ..key import NodePrivate
from . import frames as F
from .errors import AdmissionError, FrameError, HandshakeError
from .info import ClientInfo, ServerInfo, open_client_info, server_info_payload
from .runs import rewrite_run

QUEUE_DEPTH = 32  # packets per data/disco queue: a slow reader costs at most this much memory
# Control frames per regular client; a mesh watcher's is unbounded because its initial
# PeerPresent dump is one frame per connected client.
CTRL_QUEUE_DEPTH = 256
NOT_HERE_BURST = 3.0  # PeerGone(NotHere) token bucket: stops reflection floods
NOT_HERE_RATE = 1.0  # per second
# Runs of frames at least this long are forwarded as views of the read buffer; shorter ones
# are copied (cheap), so a view pins at most READ/VIEW_MIN times its own size.
VIEW_MIN = 1024  # bytes
_HDR = F.HEADER
_SEND = int(F.FrameType.SEND_PACKET)
_RECV = int(F.FrameType.RECV_PACKET)
_KEY_LEN = F.KEY_LEN
_MAX_SEND = F.KEY_LEN + F.MAX_PACKET_SIZE

ConnID = int
Addr = tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]
Packet = bytes | memoryview
Item = tuple[Packet, ...]  # frame parts, written back to back


class SendQueue:
    """Outgoing frames of one connection: control, disco and data, bounded separately.

    The deques are created on first use: most of 10,000 idle clients never need a disco or
    control queue, and an empty deque costs about 600 bytes.
    """

    __slots__ = ("ctrl", "ctrl_depth", "data", "depth", "disco", "drops")

    def __init__(self, depth: int = QUEUE_DEPTH, ctrl_depth: int | None = CTRL_QUEUE_DEPTH):
        self.ctrl: deque[Item] | None = None
        self.disco: deque[Item] | None = None
        self.data: deque[Item] | None = None
        self.depth = depth
        self.ctrl_depth = ctrl_depth
        self.drops = 0

    def push_packet(self, item: Item, disco: bool) -> bool:
        """Queue a packet; True if an older one was head-dropped to make room."""
        if disco:
            q = self.disco
            if q is None:
                q = self.disco = deque()
        else:
            q = self.data
            if q is None:
                q = self.data = deque()
        dropped = False
        if len(q) >= self.depth:
            q.popleft()
            self.drops += 1
            dropped = True
        q.append(item)
        return dropped

    def push_ctrl(self, item: Item) -> bool:
        """Queue a control frame; False (and dropped) if the control queue is full."""
        q = self.ctrl
        if q is None:
            q = self.ctrl = deque()
        if self.ctrl_depth is not None and len(q) >= self.ctrl_depth:
            self.drops += 1
            return False
        q.append(item)
        return True

    def pop_batch(self, max_items: int = 64) -> list[Packet]:
        """Frame parts for up to ``max_items`` frames, control first, then disco, then data."""
        out: list[Packet] = []
        n = 0
        for q in (self.ctrl, self.disco, self.data):
            while q and n < max_items:
                out.extend(q.popleft())
                n += 1
        return out

    def clear(self) -> int:
        n = len(self)
        for q in (self.ctrl, self.disco, self.data):
            if q:
                q.clear()
        return n

    def __len__(self) -> int:
        return (
            (len(self.ctrl) if self.ctrl else 0)
            + (len(self.disco) if self.disco else 0)
            + (len(self.data) if self.data else 0)
        )


@dataclass(slots=True)
class Conn:
    """One logged-in connection (a client, or a mesh peer's client link into us)."""

    id: ConnID
    key: bytes
    mesh: bool = False
    prober: bool = False
    not_ideal: bool = False
    remote: Addr | None = None
    preferred: bool = False
    watcher: bool = False
    queue: SendQueue = field(default_factory=SendQueue)
    pong_pending: bool = False
    not_here_tokens: float = NOT_HERE_BURST
    not_here_at: float = 0.0
    direct: bool = False  # packets go to ``out`` (the driver's transport has room)
    hold: bool = False  # not direct, and the driver may hold senders until it drains
    out: list[Packet] | None = None

    @property
    def flags(self) -> int:
        flags = 0
        if self.mesh:
            flags |= F.PeerPresentFlags.IS_MESH_PEER
        if self.prober:
            flags |= F.PeerPresentFlags.IS_PROBER
        if self.not_ideal:
            flags |= F.PeerPresentFlags.NOT_IDEAL
        return flags or F.PeerPresentFlags.IS_REGULAR


@dataclass(slots=True)
class Forwarder:
    """Our client link to another relay of the region, carrying ForwardPacket frames."""

    id: ConnID
    queue: SendQueue = field(default_factory=lambda: SendQueue(ctrl_depth=None))
    keys: set[bytes] = field(default_factory=set)


@dataclass(slots=True)
class RelayStats:
    packets_relayed: int = 0
    bytes_relayed: int = 0
    packets_forwarded: int = 0
    bytes_forwarded: int = 0
    drops: dict[str, int] = field(default_factory=dict)

    def drop(self, reason: str, n: int = 1) -> None:
        self.drops[reason] = self.drops.get(reason, 0) + n


class Relay:
    """The routing state of one DERP server."""

    def __init__(
        self,
        private: NodePrivate,
        *,
        mesh_key: bytes | None = None,
        queue_depth: int = QUEUE_DEPTH,
    ) -> None:
        """
        :param private: the server's key (its public half is sent in ServerKey).
        :param mesh_key: the 32-byte region mesh secret, or None for no meshing.
        :param queue_depth: per-connection data and disco queue depth.
        """
        if mesh_key is not None and len(mesh_key) != 32:
            raise ValueError("mesh key must be 32 bytes")
        self.private = private
        self.public = private.public_raw()
        self.mesh_key = mesh_key
        self.queue_depth = queue_depth
        self.conns: dict[ConnID, Conn] = {}
        self.by_key: dict[bytes, list[ConnID]] = {}  # active connection last
        self.forwarders: dict[ConnID, Forwarder] = {}
        self.forward_key: dict[bytes, list[ConnID]] = {}  # first registered forwarder wins
        self.sent_to: dict[bytes, dict[bytes, ConnID]] = {}  # src key -> {dst key: dst conn}
        self.watchers: set[ConnID] = set()
        self.stats = RelayStats()
        self._ready: set[ConnID] = set()
        self._closes: list[ConnID] = []
        self._next_id = 1

    # ---- login --------------------------------------------------------------------------

    def server_key_frame(self) -> bytes:
        return F.server_key(self.public)

    def open_client_info(self, payload: bytes) -> tuple[bytes, ClientInfo]:
        """Decode and open a ClientInfo frame payload; raises HandshakeError/FrameError."""
        frame = F.decode(F.FrameType.CLIENT_INFO, payload)
        assert isinstance(frame, F.ClientInfoFrame)
        return frame.key, open_client_info(self.private, frame.key, frame.sealed)

    def is_mesh_peer(self, info: ClientInfo) -> bool:
        """Constant-time comparison of the offered mesh key with ours (1.9)."""
        if self.mesh_key is None or not info.mesh_key:
            return False
        try:
            offered = bytes.fromhex(info.mesh_key)
        except ValueError:
            return False
        return hmac.compare_digest(offered, self.mesh_key)

    def check_mesh_key(self, info: ClientInfo) -> bool:
        """True if a mesh peer; raises AdmissionError if a wrong mesh key was offered."""
        if not info.mesh_key:
            return False
        if not self.is_mesh_peer(info):
            raise AdmissionError("bad_mesh_key")
        return True

    def server_info_frame(self, client_key: bytes, nonce: bytes) -> bytes:
        payload = server_info_payload(self.private, client_key, ServerInfo(), nonce)
        return F.encode(F.FrameType.SERVER_INFO, payload)

    # ---- connections --------------------------------------------------------------------

    def add_conn(
        self,
        key: bytes,
        *,
        mesh: bool = False,
        prober: bool = False,
        not_ideal: bool = False,
        remote: Addr | None = None,
    ) -> Conn:
        """Register a logged-in connection; it becomes the active one for its key."""
        if len(key) != F.KEY_LEN:
            raise HandshakeError("bad client key length")
        cid = self._next_id
        self._next_id += 1
        conn = Conn(
            cid,
            key,
            mesh=mesh,
            prober=prober,
            not_ideal=not_ideal,
            remote=remote,
            queue=SendQueue(self.queue_depth, None if mesh else CTRL_QUEUE_DEPTH),
        )
        self.conns[cid] = conn
        self.by_key.setdefault(key, []).append(cid)
        frame = F.peer_present(key, remote, conn.flags)
        for w in self.watchers:
            self._ctrl(self.conns[w], frame)
        return conn

    def remove_conn(self, cid: ConnID) -> None:
        """Forget a closed connection; its unsent queue counts as dropped."""
        conn = self.conns.pop(cid, None)
        if conn is None:
            return
        self._ready.discard(cid)
        pending = conn.queue.clear()
        if conn.out:
            pending += len(conn.out) // 2
            conn.out = None
        if pending:
            self.stats.drop("conn_closed", pending)
        self.watchers.discard(cid)
        ids = self.by_key.get(conn.key, [])
        if cid in ids:
            ids.remove(cid)
        if ids:
            return
        self.by_key.pop(conn.key, None)
        gone = F.peer_gone(conn.key, F.PeerGoneReason.DISCONNECTED)
        for w in self.watchers:
            self._ctrl(self.conns[w], gone)
        if conn.key not in self.forward_key:
            self._notify_gone(conn.key)

    def _notify_gone(self, key: bytes) -> None:
        """Tell everyone who heard from ``key`` that it left the region."""
        receivers = self.sent_to.pop(key, {})
        frame = F.peer_gone(key, F.PeerGoneReason.DISCONNECTED)
        for dst_cid in receivers.values():
            dst = self.conns.get(dst_cid)
            if dst is not None:
                self._ctrl(dst, frame)

    def active(self, key: bytes) -> Conn | None:
        ids = self.by_key.get(key)
        return self.conns[ids[-1]] if ids else None

    def __contains__(self, key: object) -> bool:
        return key in self.by_key

    # ---- frames from clients ------------------------------------------------------------

    def handle_frame(self, cid: ConnID, ftype: int, payload: bytes, now: float) -> None:
        """Act on one frame from a logged-in connection; raises RemoteDERPError to close it."""
        conn = self.conns[cid]
        if ftype == F.FrameType.SEND_PACKET:
            n = len(payload)
            if not F.KEY_LEN <= n <= F.KEY_LEN + F.MAX_PACKET_SIZE:
                raise FrameError("bad SendPacket length")
            ids = self.by_key[conn.key]
            if ids[-1] != cid:  # a duplicate that writes becomes the active one
                ids.remove(cid)
                ids.append(cid)
            # The packet is a view: queued and written without another copy.
            self._route(conn, payload[: F.KEY_LEN], memoryview(payload)[F.KEY_LEN :], now)
            return
        frame = F.decode(ftype, payload)
        match frame:
            case F.ForwardPacket(src, dst, packet):
                if not conn.mesh:
                    raise AdmissionError("forward_without_mesh_key")
                self._deliver_local(conn, src, dst, packet, now, forwarded=True)
            case F.NotePreferred(preferred):
                conn.preferred = preferred
            case F.Ping(data):
                if conn.pong_pending:
                    self.stats.drop("pong_pending")
                else:
                    conn.pong_pending = True
                    self._ctrl(conn, F.pong(data))
            case F.WatchConns():
                if not conn.mesh:
                    raise AdmissionError("watch_without_mesh_key")
                if conn.key != self.public:  # ignore ourselves (self-mesh)
                    self._start_watch(conn)
            case F.ClosePeer(key):
                if not conn.mesh:
                    raise AdmissionError("close_without_mesh_key")
                self._closes.extend(self.by_key.get(key, []))
            case _:
                pass  # client Pongs, KeepAlives and unknown types are skipped (1.5)

    def handle_buffer(
        self,
        cid: ConnID,
        buf: memoryview,
        start: int,
        end: int,
        now: float,
        max_frame: int,
        hold: bool = False,
    ) -> tuple[int, bool, ConnID]:
        """Act on every complete frame in ``buf[start:end]`` (see the module docstring).

        Returns (offset of the first unconsumed byte, whether a view of ``buf`` was handed
        out: the caller must then never overwrite ``buf[:offset]``, and the connection whose
        ``hold`` stopped the walk in front of a packet for it, else 0; only with ``hold``).
        A header announcing more
        than ``max_frame`` bytes raises FrameError before its payload is awaited; other bad
        frames raise as in ``handle_frame``. Frames before a bad one have been acted on.
        """
        conn = self.conns[cid]
        src_key = conn.key
        by_key = self.by_key
        conns = self.conns
        unpack = _HDR.unpack_from
        rewrite = rewrite_run
        run_max = min(max_frame, _MAX_SEND)
        pos = start
        exported = False
        activated = False
        relayed = nbytes = 0
        last: Conn | None = None
        last_key = b""
        try:
            while end - pos >= 5:
                ftype, length = unpack(buf, pos)
                if length > max_frame:
                    raise FrameError(f"frame type {ftype:#x} of {length} bytes exceeds {max_frame}")
                p = pos + 5
                fend = p + length
                if fend > end:
                    break
                fstart = pos
                pos = fend
                if ftype != _SEND:
                    last = None
                    self.handle_frame(cid, ftype, buf[p:fend].tobytes(), now)
                    continue
                if not _KEY_LEN <= length <= _MAX_SEND:
                    raise FrameError("bad SendPacket length")
                if not activated:  # a duplicate that writes becomes the active one
                    activated = True
                    ids = by_key[src_key]
                    if ids[-1] != cid:
                        ids.remove(cid)
                        ids.append(cid)
                k = p + _KEY_LEN
                if last is None or buf[p:k] != last_key:
                    dst_key = buf[p:k].tobytes()
                    dids = by_key.get(dst_key)
                    if not dids:
                        last = None
                        self._route(conn, dst_key, buf[k:fend].tobytes(), now)
                        continue
                    last_key = dst_key
                    last = dst = conns[dids[-1]]
                    heard = self.sent_to.get(src_key)
                    if heard is None:
                        heard = self.sent_to[src_key] = {}
                    heard[dst_key] = dst.id
                else:
                    dst = last
                if hold and dst.hold and not dst.direct:
                    pos = fstart
                    return pos, exported, dst.id
                if dst.direct:
                    # This frame and the ones after it to the same destination become
                    # RecvPackets where they lie (runs.py): one part for the whole run.
                    pos, n, nb = rewrite(buf, fstart, end, last_key, src_key, run_max)
                    out = dst.out
                    if out is None:
                        out = dst.out = []
                        self._ready.add(dst.id)
                    if pos - fstart >= VIEW_MIN:
                        out.append(buf[fstart:pos])
                        exported = True
                    else:
                        out.append(buf[fstart:pos].tobytes())
                    relayed += n
                    nbytes += nb
                else:
                    # Queued: a copy, never a view that pins the read buffer.
                    self._queue_packet(src_key, dst, buf[k:fend].tobytes())
                    relayed += 1
                    nbytes += length - _KEY_LEN
        finally:
            self.stats.packets_relayed += relayed
            self.stats.bytes_relayed += nbytes
        return pos, exported, 0

    def set_direct(self, cid: ConnID, on: bool) -> None:
        """Turn direct output for a connection on (its transport has room) or off (and
        ``hold`` on: senders may wait for it)."""
        conn = self.conns.get(cid)
        if conn is not None:
            conn.direct = on
            conn.hold = not on

    def release_hold(self, cid: ConnID) -> None:
        """Senders no longer wait for this connection: its packets queue (and drop)."""
        conn = self.conns.get(cid)
        if conn is not None:
            conn.hold = False

    def take_out(self, cid: ConnID) -> list[Packet] | None:
        """The frame parts routed to a direct connection since the last call."""
        conn = self.conns.get(cid)
        if conn is None:
            return None
        out, conn.out = conn.out, None
        return out

    def pong_sent(self, cid: ConnID) -> None:
        """The driver wrote the pending pong; another ping may be answered."""
        conn = self.conns.get(cid)
        if conn is not None:
            conn.pong_pending = False

    def _start_watch(self, conn: Conn) -> None:
        conn.watcher = True
        self.watchers.add(conn.id)
        for ids in self.by_key.values():
            c = self.conns[ids[-1]]
            self._ctrl(conn, F.peer_present(c.key, c.remote, c.flags))

    def _route(self, src: Conn, dst: bytes, packet: Packet, now: float) -> None:
        ids = self.by_key.get(dst)
        if ids:
            self._deliver(src.key, self.conns[ids[-1]], packet)
            return
        fwd_ids = self.forward_key.get(dst)
        if fwd_ids and not src.mesh:
            fwd = self.forwarders[fwd_ids[0]]
            disco = F.looks_like_disco(packet)
            hdr = F.header(F.FrameType.FORWARD_PACKET, 2 * F.KEY_LEN + len(packet))
            if fwd.queue.push_packet((hdr, src.key, dst, packet), disco):
                self.stats.drop("queue_head")
            self.stats.packets_forwarded += 1
            self.stats.bytes_forwarded += len(packet)
            self._ready.add(fwd.id)
            return
        self._unknown_dest(src, dst, packet, now)

    def _deliver_local(
        self, via: Conn, src: bytes, dst: bytes, packet: Packet, now: float, forwarded: bool
    ) -> None:
        ids = self.by_key.get(dst)
        if ids:
            self._deliver(src, self.conns[ids[-1]], packet)
            return
        self._unknown_dest(via, dst, packet, now)

    def _queue_packet(self, src_key: bytes, dst: Conn, packet: Packet) -> None:
        n = len(packet)
        hdr = F.recv_packet_header(src_key, n)
        disco = n >= F.DISCO_MIN_LEN and packet[:6] == F.DISCO_MAGIC
        if dst.queue.push_packet((hdr, packet), disco):
            self.stats.drop("queue_head")
        self._ready.add(dst.id)

    def _deliver(self, src_key: bytes, dst: Conn, packet: Packet) -> None:
        n = len(packet)
        if dst.direct:
            out = dst.out
            if out is None:
                out = dst.out = []
            out.append(F.recv_packet_header(src_key, n))
            out.append(packet)
        else:
            self._queue_packet(src_key, dst, packet)
        stats = self.stats
        stats.packets_relayed += 1
        stats.bytes_relayed += n
        heard = self.sent_to.get(src_key)
        if heard is None:
            heard = self.sent_to[src_key] = {}
        heard[dst.key] = dst.id
        self._ready.add(dst.id)

    def _unknown_dest(self, src: Conn, dst: bytes, packet: Packet, now: float) -> None:
        self.stats.drop("unknown_dest")
        if not F.looks_like_disco(packet):
            return
        src.not_here_tokens = min(
            NOT_HERE_BURST, src.not_here_tokens + (now - src.not_here_at) * NOT_HERE_RATE
        )
        src.not_here_at = now
        if src.not_here_tokens >= 1.0:
            src.not_here_tokens -= 1.0
            self._ctrl(src, F.peer_gone(dst, F.PeerGoneReason.NOT_HERE))

    def _ctrl(self, conn: Conn, frame: bytes) -> None:
        if conn.queue.push_ctrl((frame,)):
            self._ready.add(conn.id)
        else:
            self.stats.drop("ctrl_queue_full")

    def broadcast_health(self, problem: str) -> None:
        """Queue a Health frame for every client ("" clears the problem); mesh peers skip it."""
        frame = F.health(problem)
        for conn in self.conns.values():
            if not conn.mesh:
                self._ctrl(conn, frame)

    # ---- mesh forwarders (our client links to other relays of the region) ---------------

    def add_forwarder(self) -> Forwarder:
        fid = self._next_id
        self._next_id += 1
        fwd = Forwarder(fid, SendQueue(self.queue_depth, None))
        self.forwarders[fid] = fwd
        return fwd

    def forwarder_present(self, fid: ConnID, key: bytes) -> None:
        """A mesh peer announced that ``key`` is connected to it."""
        fwd = self.forwarders.get(fid)
        if fwd is None or key == self.public:
            return
        fwd.keys.add(key)
        ids = self.forward_key.setdefault(key, [])
        if fid not in ids:
            ids.append(fid)

    def forwarder_gone(self, fid: ConnID, key: bytes) -> None:
        fwd = self.forwarders.get(fid)
        if fwd is None:
            return
        fwd.keys.discard(key)
        self._unregister_forward(fid, [key])

    def remove_forwarder(self, fid: ConnID) -> None:
        """The mesh link broke: forget every key it announced."""
        fwd = self.forwarders.pop(fid, None)
        if fwd is None:
            return
        self._ready.discard(fid)
        pending = fwd.queue.clear()
        if pending:
            self.stats.drop("conn_closed", pending)
        self._unregister_forward(fid, list(fwd.keys))

    def _unregister_forward(self, fid: ConnID, keys: Iterable[bytes]) -> None:
        for key in keys:
            ids = self.forward_key.get(key)
            if not ids or fid not in ids:
                continue
            ids.remove(fid)
            if not ids:
                del self.forward_key[key]
                if key not in self.by_key:
                    self._notify_gone(key)

    # ---- outputs ------------------------------------------------------------------------

    def queue_of(self, cid: ConnID) -> SendQueue | None:
        conn = self.conns.get(cid)
        if conn is not None:
            return conn.queue
        fwd = self.forwarders.get(cid)
        return fwd.queue if fwd is not None else None

    @property
    def has_output(self) -> bool:
        """True if take_ready() or take_closes() has something."""
        return bool(self._ready or self._closes)

    def take_ready(self) -> set[ConnID]:
        """Connections and forwarders whose queues gained frames since the last call."""
        ready, self._ready = self._ready, set()
        return ready

    def take_closes(self) -> list[ConnID]:
        """Connections the core wants closed (ClosePeer from a mesh peer)."""
        closes, self._closes = self._closes, []
        return closes

    @property
    def client_count(self) -> int:
        return len(self.conns)

    @property
    def unique_keys(self) -> int:
        return len(self.by_key)
