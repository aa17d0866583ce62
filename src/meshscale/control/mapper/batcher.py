"""Fan-out of state changes to map sessions, coalesced per session (Headscale's batcher).

Theory of operation::

    State change bus ──> Batcher.handle(event)        O(sessions) set updates, no encoding
                           marks each affected session's Pending and wakes it
    session task    ──> Batcher.build(session, now)   one message from everything pending:
                           full map (first message, policy/DNS change, resync) or a delta
                           (Node, PeersChanged, PeersChangedPatch, PeersRemoved)

A policy change reaches only the sessions whose answers changed: ``PolicyChanged(nodes)``
names them (the policy manager says so, through State); ``PolicyChanged()`` means all.

No change ever triggers a recomputation of every node's full map: a peer change becomes one
entry in each session's pending set, and all sessions that wake for the same change share
one encoded delta (``_shared``). Full maps are built only for the session that needs one.

A full map with zero peers must still remove what the client holds (``Peers: []`` means
"no change", docs/protocol/control.md §4.3): the batcher keeps a bounded log of removed node IDs for
that, rather than a peer set per session (which would be O(nodes^2) memory).

A removal reaches only the sessions that could hold the peer (issue #16: another tailnet's
streams must not learn that a node ID existed): those of the peer's tailnet (the removal
event carries it: the node is gone from State by then), and those it was sent to across
tailnets by a share (``MapSession.foreign``: the few shared peers' IDs, not a peer set).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, assert_never

from meshscale.control import models
from meshscale.control.mapper import fullmap, mapper, snapshot
from meshscale.control.state import StateReader
from meshscale.tailcfg import FilterRule

# Fields of the self node that do not change what the client shows about itself.
_SELF_IRRELEVANT = frozenset({"last_seen", "online"})
# Fields of a node that can change which peers it may see: its own sessions get a full map
# (the peers' side is the per-viewer visibility filter of build()).
_SELF_POLICY = frozenset({"ipv4", "ipv6", "user_id", "tags", "approved_routes"})
MAX_SHARED_CACHE = 64  # encoded deltas kept between events: memory bound
MAX_VIEWER_SETS = 256  # per-node viewer sets kept while only patches arrive: memory bound
MAX_EPOCHS = 1024  # broadcast batches kept for sessions that fall behind
REMOVED_LOG = 65536  # node IDs remembered as removed (for zero-peer full maps)
# Sessions one fan-out pass writes per loop turn. A pass to 10,000 streams costs ~0.25 s;
# in one piece it held the loop that long, so every round trip of a join in progress (TCP,
# upgrade, Noise, register, map request: five or so) could wait a whole pass, and a ramp's
# joins were bound by latency with the CPU half idle (issue #14 goal 4). At ~25 us a
# session a slice is ~10-15 ms.
FANOUT_SLICE = 512

# What a delta is built from (changed, patched, removed, users): sessions with equal keys
# share one message.
_DeltaKey = tuple[
    tuple[int, ...], tuple[tuple[int, frozenset[str]], ...], tuple[int, ...], tuple[int, ...]
]


@dataclass(slots=True)
class Pending:
    full: bool = True  # the first message is always a full map
    self_changed: bool = False
    changed: set[int] = field(default_factory=set)
    patched: dict[int, frozenset[str]] = field(default_factory=dict)
    removed: set[int] = field(default_factory=set)
    users: set[int] = field(default_factory=set)

    def empty(self) -> bool:
        return not (
            self.full or self.self_changed or self.changed or self.patched or self.removed
            or self.users
        )  # fmt: skip


class MapSession:
    """One streaming map poll. The batcher fills ``pending``; the poll task drains it.

    With ``push`` set (a synchronous writer of one framed message), deltas for a session
    whose task is ``idle`` are written by the batcher's fan-out tick directly: one pass over
    the sessions per change instead of a task wake-up, a timer and an h2 round per stream.
    """

    __slots__ = (
        "bpos", "closed", "compress", "foreign", "idle", "last_write", "legacy_derp", "node_id",
        "pending", "push", "revoked", "started", "tailnet", "unsent", "wake",
    )  # fmt: skip

    def __init__(
        self,
        node_id: models.NodeID,
        push: Callable[[bytes], bool] | None = None,
        compress: bool = False,
        *,
        legacy_derp: bool = False,
    ) -> None:
        self.node_id = node_id
        self.legacy_derp = legacy_derp  # the client predates Node.HomeDERP (mapper.encode)
        self.pending = Pending()
        self.started = False  # the first (full) message went out
        self.wake = asyncio.Event()
        self.wake.set()
        self.closed = False  # the node was deleted: the stream must end
        self.push = push
        self.compress = compress
        self.idle = False  # the poll task waits for a wake-up (nothing of its own in flight)
        self.last_write = 0.0  # loop time of the last message written
        self.unsent = b""  # a framed message the tick built but could not push: task sends it
        self.bpos = 0  # index of the first broadcast batch not merged into this session yet
        self.revoked = False  # the node's key expired and it was told so: no peer news
        self.tailnet: int | None = None  # the node's tailnet (set by every build)
        self.foreign: set[int] = set()  # IDs of peers of other tailnets it was sent (shares)

    def close(self) -> None:
        self.closed = True
        self.wake.set()


class MapSource(Protocol):
    """What the batcher reads (kept narrow so tests can pass a fake)."""

    def node(self, node_id: int) -> models.Node | None: ...
    def peers_of(self, node_id: int) -> list[models.Node]: ...
    def users(self) -> dict[models.UserID, models.User]: ...
    def packet_filter(self, node_id: int) -> Sequence[FilterRule]: ...
    def routes_view(self, viewer_id: int, peer_id: int) -> mapper.RoutesView:
        """Which of the peer's routes the viewer may see (None: all)."""
        ...

    def viewers_of(self, node_id: int) -> set[int] | None:
        """The nodes the policy lets see ``node_id`` (None: everyone may)."""
        ...

    def node_ids(self) -> list[int]: ...
    def self_caps(self, node_id: int) -> dict[str, None]: ...
    def share_view(self, viewer_id: int, peer_id: int) -> mapper.ShareView | None:
        """How the viewer sees a peer of another tailnet (None: same tailnet)."""
        ...

    def has_shares(self) -> bool:
        """Whether share_view can return anything but None (any node shared at all)."""
        ...


class SnapshotSource:
    """The MapSource over State: nodes, users, and the policy's peers and filter."""

    def __init__(self, state: StateReader) -> None:
        self._state = state

    def node(self, node_id: int) -> models.Node | None:
        try:
            return self._state.get_node(models.NodeID(node_id))
        except models.NotFound:
            return None

    def peers_of(self, node_id: int) -> list[models.Node]:
        return self._state.peers_of(models.NodeID(node_id))

    def users(self) -> dict[models.UserID, models.User]:
        return self._state.users_by_id()  # shared until a user changes; read only

    def packet_filter(self, node_id: int) -> Sequence[FilterRule]:
        return self._state.packet_filter(models.NodeID(node_id))

    def viewers_of(self, node_id: int) -> set[int] | None:
        return self._state.viewers_of(models.NodeID(node_id))

    def routes_view(self, viewer_id: int, peer_id: int) -> mapper.RoutesView:
        return self._state.routes_view(models.NodeID(viewer_id), models.NodeID(peer_id))

    def node_ids(self) -> list[int]:
        return [int(n.id) for n in self._state.list_nodes()]

    def self_caps(self, node_id: int) -> dict[str, None]:
        return self._state.self_caps(models.NodeID(node_id))

    def share_view(self, viewer_id: int, peer_id: int) -> mapper.ShareView | None:
        return self._state.share_view(models.NodeID(viewer_id), models.NodeID(peer_id))

    def base_domain_of(self, node_id: int) -> str | None:
        """The MagicDNS base domain of the node's tailnet, if it has its own."""
        return self._state.tailnet_base_domain(models.NodeID(node_id))

    def shared_domains_of(self, node_id: int) -> tuple[str, ...]:
        """Other tailnets' base domains the node's shared-in peers are named under."""
        return self._state.shared_domains(models.NodeID(node_id))

    def has_shares(self) -> bool:
        return self._state.has_shares()


class Batcher:
    """Coalesces change events into per-session pending deltas.

    Parameters:
      source: a MapSource (SnapshotSource over State).
      cfg: a callable returning the current MapConfig (DNS/DERP may change).
    """

    def __init__(self, source: MapSource, cfg: Callable[[], mapper.MapConfig]) -> None:
        self.source = source
        self.cfg = cfg
        # Tailnets (issue #16), if the source knows them: a tailnet's own base domain.
        self._domain_of: Callable[[int], str | None] | None = getattr(
            source, "base_domain_of", None
        )
        self.cache = mapper.NodeJSONCache()
        self.chunks = fullmap.PeerChunks()  # compressed pieces of full maps (fullmap.py)
        # Every node's peer JSON by ID range, for viewers that see everyone (snapshot.py).
        self.snap = snapshot.Snapshot(self.chunks.compress, fullmap.CHUNK)
        self._sessions: dict[int, set[MapSession]] = {}
        self._count = 0
        # Node IDs removed lately, for full maps that end up with zero peers. Per-session
        # peer sets would cost O(nodes) memory per stream, O(nodes^2) in all.
        # (node ID -> its tailnet, None if the source has none; oldest first)
        self._recently_removed: dict[int, int | None] = {}
        self._tailnets: dict[int, int | None] = {}  # live nodes' tailnets, per event
        self._shared: dict[_DeltaKey, dict[str, Any]] = {}
        # Who may see a changed node (the policy's answer, once per node until an event
        # that can change access; visibility is symmetric, so one peer set serves every
        # viewer's check).
        self._viewers: dict[int, set[int] | None] = {}
        self._encoded: dict[tuple[int, bool, bool], tuple[dict[str, Any], bytes]] = {}
        self.events_handled = 0
        self.sync: Callable[[], None] | None = None  # drains queued events into handle()
        self.full_maps_built = 0
        self.deltas_built = 0
        self.pushed = 0  # messages the fan-out tick wrote itself
        # The fan-out tick (enable_direct): sessions with a pending change and a push writer.
        self._dirty: set[MapSession] = set()
        self._tick: asyncio.TimerHandle | None = None
        self._last_tick = 0.0
        self.last_cost = 0.0  # seconds the last fan-out tick took (the tick spacing's input)
        self.fanout_slice = FANOUT_SLICE
        self._pass: _Pass | None = None  # the tick being written, slice by slice
        self._slice: asyncio.Handle | None = None  # its next slice
        self._rearm = False  # a change came while a pass was being written: tick after it
        self._clock: Callable[[], datetime] | None = None
        self._framer: Callable[[bytes, bool], bytes] | None = None
        self._delay: Callable[[float, float, float], float] = lambda last, now, cost: 0.0
        # The session-independent parts of a shared delta, per delta key: the changed
        # nodes, whether any has routes, their tailnets. And what a session of a tailnet
        # without shares sees of it (_visible), per (key, tailnet), when no changed peer is
        # hidden by the policy from anyone. Without these a fan-out of a batch of B joins
        # to S sessions costs O(S*B) lookups, as much as the deltas themselves.
        self._facts: dict[_DeltaKey, _Facts] = {}
        self._seen: dict[tuple[_DeltaKey, int | None], Pending] = {}
        # Peer changes every session sees (all but the node itself) go, in direct mode, into
        # one shared batch per tick instead of N per-session sets per event: a ramp of N
        # joins costs O(N) set updates per tick, not O(N) per event (O(N^2) in all).
        self._epochs: list[Pending] = []  # closed batches, oldest first
        self._epoch_base = 0  # absolute index of _epochs[0]
        self._open = Pending(full=False)  # the batch being filled
        self._merged: dict[int, tuple[Pending, _DeltaKey]] = {}  # union of _epochs[i:]

    def enable_direct(
        self,
        clock: Callable[[], datetime],
        framer: Callable[[bytes, bool], bytes],
        delay: Callable[[float, float, float], float],
    ) -> None:
        """Let one tick write deltas to sessions that have a ``push`` writer.

        ``delay(last_tick, now, cost)`` is how long after a change the tick runs
        (coalescing, and the minimum gap between ticks at scale); ``cost`` is how long the
        last tick took, so the spacing can follow what a fan-out really costs: everything
        that arrives meanwhile goes into the next tick."""
        self._clock, self._framer, self._delay = clock, framer, delay

    # ---- sessions ----------------------------------------------------------------------

    def add(self, session: MapSession) -> None:
        # Apply events already published (the MapRequest's own endpoint/hostinfo write)
        # so the new session does not receive them again right after its full map.
        if self.sync is not None:
            self.sync()
        session.bpos = self._epoch_base + len(self._epochs)
        group = self._sessions.setdefault(session.node_id, set())
        if session not in group:
            group.add(session)
            self._count += 1

    def remove(self, session: MapSession) -> None:
        self._dirty.discard(session)
        group = self._sessions.get(session.node_id)
        if group is not None and session in group:
            group.discard(session)
            self._count -= 1
            if not group:
                del self._sessions[session.node_id]

    def session_count(self, node_id: int | None = None) -> int:
        if node_id is not None:
            return len(self._sessions.get(node_id, ()))
        return self._count

    def _all(self) -> list[MapSession]:
        return [s for g in self._sessions.values() for s in g]

    # ---- events ------------------------------------------------------------------------

    def handle(self, event: models.Change) -> None:
        """Mark what ``event`` means for every session. Cheap: no JSON is built here."""
        self.events_handled += 1
        self._shared.clear()
        self._encoded.clear()
        self._facts.clear()
        self._seen.clear()
        match event:  # what the full-map snapshot must rebuild
            case models.NodeAdded(node_id=nid):
                self.snap.added(nid)
            case models.NodeChanged(node_id=nid):
                self.snap.changed(nid)
            case models.NodeRemoved(node_id=nid):
                self.snap.removed(nid)
            case _:
                self.snap.clear()
        patch_only = isinstance(event, models.NodeChanged) and (
            event.fields <= mapper.PATCHABLE_FIELDS
        )
        if not patch_only or len(self._viewers) > MAX_VIEWER_SETS:
            self._viewers.clear()  # (endpoints, online, DERP moves change no one's access)
            self._tailnets.clear()
        match event:
            case models.NodeAdded(node_id=nid) if self._clock is not None:
                self.cache.drop(nid)
                _apply_changed(self._open, nid)
                self._schedule()
            case models.NodeAdded(node_id=nid):
                self.cache.drop(nid)
                for s in self._all():
                    if s.node_id != nid:
                        self._mark_changed(s, nid)
            case models.NodeChanged(node_id=nid, fields=fields):
                if "hostinfo" in fields:
                    # Clients re-send Hostinfo on every home-DERP move; compare with what
                    # peers were last sent and patch the region instead of the whole node.
                    old, new = self.cache.snapshot(nid), self.source.node(nid)
                    if old is not None and new is not None:
                        if mapper.only_home_derp_changed(old, new):
                            fields = (fields - {"hostinfo"}) | {"home_derp"}
                        elif old.hostinfo == new.hostinfo:
                            fields = fields - {"hostinfo"}
                    if not fields:
                        return
                self.cache.forget(nid)
                patchable = fields <= mapper.PATCHABLE_FIELDS
                current = self.source.node(nid)
                if patchable and current is not None:
                    self.cache.remember(current)
                if self._clock is not None:
                    if fields - _SELF_IRRELEVANT:
                        for s in self._sessions.get(nid, ()):
                            s.pending.self_changed = True
                            s.pending.full |= bool(fields & _SELF_POLICY)
                            self._touch(s)
                    if patchable:
                        _apply_patch(self._open, nid, fields)
                    else:
                        _apply_changed(self._open, nid)
                    self._schedule()
                    return
                for s in self._all():
                    if s.node_id == nid:
                        if fields - _SELF_IRRELEVANT:
                            s.pending.self_changed = True
                            s.pending.full |= bool(fields & _SELF_POLICY)
                            self._touch(s)
                    elif patchable and nid not in s.pending.changed:
                        prev = s.pending.patched.get(nid, frozenset())
                        s.pending.patched[nid] = prev | fields
                        self._touch(s)
                    else:
                        self._mark_changed(s, nid)
            case models.NodeRemoved(node_id=nid) if self._clock is not None:
                self.cache.drop(nid)
                self._note_removed(nid, event.tailnet_id)
                for s in list(self._sessions.get(nid, ())):
                    s.close()
                _apply_removed(self._open, nid)
                self._schedule()
            case models.NodeRemoved(node_id=nid):
                self.cache.drop(nid)
                self._note_removed(nid, event.tailnet_id)
                for s in self._all():
                    if s.node_id == nid:
                        s.close()
                        continue
                    p = s.pending
                    p.changed.discard(nid)
                    p.patched.pop(nid, None)
                    p.removed.add(nid)
                    self._touch(s)
            case models.UserChanged(user_id=uid):
                for s in self._all():
                    s.pending.users.add(uid)
                    self._touch(s)
            case models.PolicyChanged(nodes=nids) if nids is not None:
                for nid in nids:
                    for s in self._sessions.get(nid, ()):
                        s.pending.full = True
                        self._touch(s)
            case models.PolicyChanged() | models.DNSChanged() | models.ResyncRequired():
                if isinstance(event, models.DNSChanged):
                    self.cache.clear_json()  # a (tailnet's) base domain may have changed
                for s in self._all():
                    s.pending.full = True
                    self._touch(s)
            case _:
                assert_never(event)

    def _note_removed(self, nid: int, tailnet: int | None) -> None:
        log = self._recently_removed
        log.pop(nid, None)
        log[nid] = tailnet
        if len(log) > REMOVED_LOG:
            del log[next(iter(log))]

    def _tailnet_of(self, nid: int) -> tuple[bool, int | None]:
        """(known, tailnet) of a live or lately removed node (tailnet None: any)."""
        if nid not in self._tailnets:
            n = self.source.node(nid)
            if n is not None:
                self._tailnets[nid] = int(n.tailnet_id)
            elif nid in self._recently_removed:
                return True, self._recently_removed[nid]
            else:
                return False, None
        return True, self._tailnets[nid]

    def _could_see(self, s: MapSession, nid: int) -> bool:
        """Whether session ``s`` may hold peer ``nid`` (and so may hear of its removal)."""
        if nid in s.foreign:
            return True
        known, tailnet = self._tailnet_of(nid)
        return known and (tailnet is None or tailnet == s.tailnet)

    def _knows_user(self, s: MapSession, uid: int) -> bool:
        """Whether session ``s`` may get user ``uid``'s profile: a user of its tailnet, or
        the owner or sharer of a peer a share brought in (another tailnet's are not news)."""
        user = self.source.users().get(models.UserID(uid))
        if user is None or user.tailnet_id == s.tailnet:
            return user is not None
        for nid in s.foreign:
            peer = self.source.node(nid)
            view = self.source.share_view(int(s.node_id), nid)
            if (peer is not None and peer.user_id == uid) or (view and view.sharer == uid):
                return True
        return False

    def _mark_changed(self, s: MapSession, nid: int) -> None:
        _apply_changed(s.pending, nid)
        self._touch(s)

    def _touch(self, s: MapSession) -> None:
        """``s`` has something pending: wake its task, or leave it to the fan-out tick."""
        if s.push is None or self._clock is None:
            s.wake.set()
            return
        self._dirty.add(s)
        self._schedule()

    def _schedule(self) -> None:
        if self._pass is not None:  # the next tick is spaced from the end of this one
            self._rearm = True
            return
        if self._tick is None:
            loop = asyncio.get_running_loop()
            delay = self._delay(self._last_tick, loop.time(), self.last_cost)
            self._tick = loop.call_later(delay, self._fanout)

    def _fanout(self) -> None:
        """Write every dirty idle session's message; wake the others' tasks. The pass is
        written ``fanout_slice`` sessions per loop turn (_write_slice)."""
        if self.sync is not None:
            self.sync()  # events already published go into this same pass
        self._tick = None
        if self._pass is not None:  # a direct call during a pass (_schedule waits for it)
            self._rearm = True
            return
        dirty, self._dirty = self._dirty, set()
        if not self._open.empty():  # a broadcast batch: every session has something
            self._epochs.append(self._open)
            self._open = Pending(full=False)
            self._merged.clear()
            if len(self._epochs) > MAX_EPOCHS:  # sessions this far behind get a full map
                drop = len(self._epochs) - MAX_EPOCHS // 2
                del self._epochs[:drop]
                self._epoch_base += drop
            targets: Iterable[MapSession] = self._all()
        else:
            targets = dirty
        if self._clock is None or self._framer is None:
            return
        now = self._clock()
        t = self._last_tick = asyncio.get_running_loop().time()
        self._pass = _Pass(list(targets), 0, now, t)
        self._write_slice()

    def _write_slice(self) -> None:
        """Write the next slice of the pass in progress; the rest goes in later loop turns.
        Events meanwhile go into the next batch (or the sessions' pending sets), so the
        sessions of later slices are written the same batches as the first ones."""
        ps = self._pass
        if self._slice is not None:
            self._slice.cancel()
            self._slice = None
        if ps is None:
            return
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        end = ps.pos + max(1, self.fanout_slice)
        try:
            self._write_all(ps.targets[ps.pos : end], ps.now, ps.t)
        except BaseException:
            self._pass = None
            raise
        finally:
            ps.spent += loop.time() - t0
        ps.pos = end
        if end < len(ps.targets):
            self._slice = loop.call_soon(self._write_slice)
            return
        self._pass = None
        self.last_cost = ps.spent
        if self._rearm:
            self._rearm = False
            self._schedule()

    def _write_all(self, targets: Iterable[MapSession], now: datetime, t: float) -> None:
        assert self._framer is not None
        sessions = self._sessions
        for s in targets:
            if s not in sessions.get(s.node_id, ()):
                continue  # its stream ended while the pass was being written
            if s.closed or not s.idle or s.push is None or s.unsent:
                s.wake.set()
                continue
            msg = self.build(s, now)
            if msg is None:
                continue
            data = self.encode(msg, s.compress, self._framer, legacy_derp=s.legacy_derp)
            if s.push(data):
                s.last_write = t
                self.pushed += 1
            else:
                s.unsent = data
                s.wake.set()

    # ---- building ----------------------------------------------------------------------

    def build(self, session: MapSession, now: datetime) -> dict[str, Any] | None:
        """Drain ``session.pending`` into one message (None if nothing is to be sent)."""
        p = session.pending
        if not p.empty():  # (an empty one stays: a fan-out tick to 10,000 sessions that
            session.pending = Pending(full=False)  # have nothing of their own allocates none)
        shared_key: _DeltaKey | None = None
        end = self._epoch_base + len(self._epochs)
        if session.bpos < end and not p.full:
            if session.bpos < self._epoch_base:
                p = Pending(full=True)  # its batches were dropped: resync
            else:
                merged, mkey = self._merged_from(session.bpos)
                nid = int(session.node_id)
                mine = nid in merged.changed or nid in merged.patched or nid in merged.removed
                if p.empty() and not mine:
                    p, shared_key = merged, mkey  # read-only from here on
                else:
                    if p is session.pending:
                        p = Pending(full=False)
                    _merge(p, merged, skip=nid)
        session.bpos = end
        if p.empty():
            return None
        cfg = self.cfg()
        me = self.source.node(session.node_id)
        if me is None:
            session.close()
            return None
        # A tailnet with its own MagicDNS base domain (issue #16): its maps name nodes
        # under it. Its peers are of that tailnet (or shared in: never cached JSON), so
        # the per-node JSON cache stays right; its deltas are not shared with others.
        domain_of = self._domain_of
        domain = domain_of(int(session.node_id)) if domain_of is not None else None
        if domain:
            cfg = mapper.for_domain(cfg, domain)
        session.tailnet = int(me.tailnet_id)
        if me.is_expired(now):
            return self._revoked_map(session, me, cfg, now)
        if session.revoked:  # logged in again: everything anew (p may be shared: replace it)
            session.revoked = False
            p = Pending(full=True)
        if p.full:
            # DNSConfig travels in full maps only: there, also route the domains of
            # other tailnets whose nodes are shared in (a share change is a full map).
            shared_domains = getattr(self.source, "shared_domains_of", None)
            extra = shared_domains(int(session.node_id)) if shared_domains is not None else ()
            if extra:
                cfg = mapper.with_routes(cfg, extra)
            snap = None if domain or extra else self._snapshot_peers(me, cfg, now)
            if snap is not None:
                msg = mapper.full_map(
                    me, (), self.source.users(), cfg, now, self.cache,
                    packet_filter=self.source.packet_filter(session.node_id),
                    self_caps=self.source.self_caps(session.node_id), snapshot=snap,
                )  # fmt: skip
                session.foreign = set()
                session.started = True
                self.full_maps_built += 1
                return msg
            peers = self.source.peers_of(session.node_id)
            msg = mapper.full_map(
                me,
                peers,
                self.source.users(),
                cfg,
                now,
                self.cache,
                packet_filter=self.source.packet_filter(session.node_id),
                self_caps=self.source.self_caps(session.node_id),
                routes_for=self._routes_for(session.node_id),
                share_for=self._share_for(session.node_id) if self.source.has_shares() else None,
            )
            if not peers and session.started:
                # An empty Peers means "no change", so a later full map with no peers must
                # remove what the client holds: every peer removed recently and every live
                # node the policy hides (unknown IDs are ignored by clients).
                # Of the session's own tailnet only, and what a share brought in.
                ids = set(self._recently_removed) | set(self.source.node_ids())
                gone = {i for i in ids if self._could_see(session, i)}
                gone.discard(int(session.node_id))
                if gone:
                    msg["PeersRemoved"] = sorted(gone)
            session.foreign = {int(n.id) for n in peers if n.tailnet_id != me.tailnet_id}
            session.started = True
            self.full_maps_built += 1
            return msg
        seen = self._visible(session, p, shared_key)
        if seen is not p:
            p, shared_key = seen, None
            if p.empty():  # all of it was another tailnet's: nothing to say
                return None
        key = shared_key if shared_key is not None else _delta_key(p)
        facts = self._facts_of(key, p)
        # A changed router's routes may differ per viewer (policy.md §5.3), and so does a
        # peer of another tailnet (a shared node, §6): not shared.
        changed = facts.changed
        share_for = self._share_for(session.node_id)
        if session.foreign or not facts.tailnets <= {me.tailnet_id}:
            session.foreign -= p.removed | p.changed
            session.foreign |= {int(n.id) for n in changed if n.tailnet_id != me.tailnet_id}
        own = (
            p.self_changed
            or bool(domain)
            or facts.routes
            or (self.source.has_shares() and any(share_for(n) is not None for n in changed))
        )
        shared: dict[str, Any] | None = None if own else self._shared.get(key)
        if shared is None:
            patches = [
                (n, f)
                for i, f in sorted(p.patched.items())
                if (n := self.source.node(i)) is not None
            ]
            removed = set(p.removed) | (set(p.changed) - {int(n.id) for n in changed})
            delta = mapper.delta_map(
                self_node=me if p.self_changed else None,
                changed=changed,
                patches=patches,
                removed=removed,
                users=self.source.users() if (changed or p.users) else {},
                cfg=cfg,
                now=now,
                cache=self.cache,
                new_users=[models.UserID(u) for u in p.users],
                self_caps=self.source.self_caps(session.node_id) if p.self_changed else None,
                routes_for=self._routes_for(session.node_id),
                share_for=share_for,
            )
            if delta is None:
                return None
            if not own:
                if len(self._shared) >= MAX_SHARED_CACHE:
                    self._shared.clear()
                self._shared[key] = delta
            shared = delta
            self.deltas_built += 1
        return shared

    def _snapshot_peers(
        self, me: models.Node, cfg: mapper.MapConfig, now: datetime
    ) -> tuple[snapshot.SnapshotPeers, set[int]] | None:
        """A full map's peers from the snapshot, when the viewer sees every node and every
        node it (then its peers are all nodes but itself) and the map is big enough."""
        if self.source.has_shares() or self.source.viewers_of(int(me.id)) is not None:
            return None
        if self.sync is not None:
            self.sync()  # nodes State already published are in the snapshot too
        if self.snap.count(self.source.node_ids) <= fullmap.MIN_PEERS:
            return None
        return self.snap.peers(
            int(me.id), self.source.node, self.source.node_ids, cfg, now, self.cache
        )

    def _routes_for(self, viewer: models.NodeID | int) -> mapper.RoutesFor:
        """The viewer's route view of one peer (policy.md §5.3)."""
        return lambda peer: self.source.routes_view(int(viewer), int(peer.id))

    def _share_for(self, viewer: models.NodeID | int) -> mapper.ShareFor:
        """The viewer's view of a peer of another tailnet (policy.md §6)."""
        return lambda peer: self.source.share_view(int(viewer), int(peer.id))

    def _revoked_map(
        self, session: MapSession, me: models.Node, cfg: mapper.MapConfig, now: datetime
    ) -> dict[str, Any] | None:
        """An expired node gets one map saying so (Node.Expired, MachineAuthorized false),
        no peers, no packet filter rules, and the removal of every peer it may hold; then
        nothing until it logs in again (issue #12 finding 2)."""
        if session.revoked:
            return None
        session.revoked = True
        msg = mapper.full_map(me, [], self.source.users(), cfg, now, self.cache, packet_filter=[])
        gone = {int(p.id) for p in self.source.peers_of(session.node_id)}
        gone |= {i for i in self._recently_removed if self._could_see(session, i)}
        gone |= session.foreign
        session.foreign = set()
        gone.discard(int(session.node_id))
        if gone and session.started:
            msg["PeersRemoved"] = sorted(gone)
        session.started = True
        self.full_maps_built += 1
        return msg

    def _facts_of(self, key: _DeltaKey, p: Pending) -> _Facts:
        """The session-independent parts of the delta ``p`` (whose key is ``key``)."""
        hit = self._facts.get(key)
        if hit is None:
            changed = [n for i in sorted(p.changed) if (n := self.source.node(i)) is not None]
            opened = all(self._sees_all(n) for n in p.changed) and all(
                self._sees_all(n) for n in p.patched
            )
            hit = self._facts[key] = _Facts(
                changed=changed,
                tailnets=frozenset(int(n.tailnet_id) for n in changed),
                routes=any(mapper.has_routes(n) for n in changed),
                open=opened,
            )
        return hit

    def _visible(self, session: MapSession, p: Pending, key: _DeltaKey | None = None) -> Pending:
        """``p`` as the session's node may see it: changed peers the policy hides from it
        become removals (they may have been visible before), patches of hidden peers are
        dropped, and removals of peers it could never hold are dropped (another tailnet's,
        not shared with it). ``p`` itself (it may be shared) when nothing is hidden.

        With ``key`` (``p`` is a shared delta) the answer is kept per tailnet when it cannot
        depend on the viewer: no peer of ``p`` is hidden from anyone and the session holds
        no shared-in peers (then only its tailnet decides removals and user profiles)."""
        memo: tuple[_DeltaKey, int | None] | None = None
        if key is not None and not session.foreign and self._facts_of(key, p).open:
            memo = (key, session.tailnet)
            hit = self._seen.get(memo)
            if hit is not None:
                return hit
        out = self._visible_now(session, p)
        if memo is not None:
            if len(self._seen) >= MAX_SHARED_CACHE:
                self._seen.clear()
            self._seen[memo] = out
        return out

    def _visible_now(self, session: MapSession, p: Pending) -> Pending:
        viewer = int(session.node_id)
        hid_c = {n for n in p.changed if n != viewer and not self._sees(viewer, n)}
        hid_p = {n for n in p.patched if n != viewer and not self._sees(viewer, n)}
        drop = {n for n in p.removed | hid_c if not self._could_see(session, n)}
        hid_u = {u for u in p.users if not self._knows_user(session, u)}
        if not hid_c and not hid_p and not drop and not hid_u:
            return p
        return Pending(
            full=p.full,
            self_changed=p.self_changed,
            changed=p.changed - hid_c,
            patched={k: v for k, v in p.patched.items() if k not in hid_p},
            removed=(p.removed | hid_c) - drop,
            users=p.users - hid_u,
        )

    def _sees_all(self, nid: int) -> bool:
        """Whether the policy lets every node see ``nid``."""
        if nid not in self._viewers:
            self._viewers[nid] = self.source.viewers_of(nid)
        return self._viewers[nid] is None

    def _sees(self, viewer: int, nid: int) -> bool:
        if nid not in self._viewers:
            self._viewers[nid] = self.source.viewers_of(nid)
        who = self._viewers[nid]
        return who is None or viewer in who

    def _merged_from(self, start: int) -> tuple[Pending, _DeltaKey]:
        """The union of the broadcast batches from absolute index ``start`` on (shared by
        every session at that index)."""
        hit = self._merged.get(start)
        if hit is None:
            batches = self._epochs[start - self._epoch_base :]
            if len(batches) == 1:
                merged = batches[0]
            else:
                merged = Pending(full=False)
                for b in batches:
                    _merge(merged, b, skip=None)
            hit = self._merged[start] = (merged, _delta_key(merged))
        return hit

    def encode(
        self,
        msg: dict[str, Any],
        compress: bool,
        framer: Callable[[bytes, bool], bytes],
        *,
        legacy_derp: bool = False,
    ) -> bytes:
        """``framer(json, compress)`` of ``msg``, shared by every session sending the same
        delta object (one JSON encoding and one zstd compression per change and per client
        generation: ``legacy_derp`` sessions get mapper.encode's older node shape)."""
        key = (id(msg), compress, legacy_derp)
        hit = self._encoded.get(key)
        if hit is not None and hit[0] is msg:
            return hit[1]
        if compress and not legacy_derp and len(msg.get("Peers", ())) >= fullmap.MIN_PEERS:
            split = mapper.encode_split(msg, self.cache)  # a big full map: shared chunks
            if split is not None:
                head, peers, tail = split
                if isinstance(peers, snapshot.SnapshotPeers):
                    body = self.snap.payload(head, peers, tail, self.cache.encoded)
                else:
                    body = self.chunks.payload(head, peers, tail, self.cache.encoded)
                return fullmap.length_prefixed(body)
        out = framer(mapper.encode(msg, self.cache, legacy_derp=legacy_derp), compress)
        if any(msg is v for v in self._shared.values()):
            self._encoded[key] = (msg, out)
        return out


@dataclass(slots=True)
class _Pass:
    targets: list[MapSession]  # the sessions this fan-out tick writes
    pos: int  # how many of them are done
    now: datetime  # the tick's wall clock (expiry checks)
    t: float  # the tick's loop time (last_write)
    spent: float = 0.0  # seconds of loop time its slices took so far


@dataclass(frozen=True, slots=True)
class _Facts:
    changed: list[models.Node]  # the changed peers still alive, by ID
    tailnets: frozenset[int]  # theirs
    routes: bool  # any of them serves routes (its JSON may differ per viewer)
    open: bool  # the policy hides none of the changed or patched peers from anyone


def _delta_key(p: Pending) -> _DeltaKey:
    return (
        tuple(sorted(p.changed)),
        tuple(sorted(p.patched.items())),
        tuple(sorted(p.removed)),
        tuple(sorted(p.users)),
    )


# What one event does to a pending set (per session, or a shared broadcast batch). A node ID
# is in at most one of changed / patched; changed and removed exclude each other.
def _apply_changed(p: Pending, nid: int) -> None:
    p.changed.add(nid)
    p.patched.pop(nid, None)
    p.removed.discard(nid)


def _apply_patch(p: Pending, nid: int, fields: frozenset[str]) -> None:
    if nid not in p.changed:
        p.patched[nid] = p.patched.get(nid, frozenset()) | fields


def _apply_removed(p: Pending, nid: int) -> None:
    p.changed.discard(nid)
    p.patched.pop(nid, None)
    p.removed.add(nid)


def _merge(into: Pending, later: Pending, skip: int | None) -> None:
    """Apply ``later`` (newer changes) on top of ``into``, leaving node ``skip`` out."""
    for nid in later.removed:
        if nid != skip:
            _apply_removed(into, nid)
    for nid in later.changed:
        if nid != skip:
            _apply_changed(into, nid)
    for nid, f in later.patched.items():
        if nid != skip:
            _apply_patch(into, nid, f)
    into.users |= later.users
