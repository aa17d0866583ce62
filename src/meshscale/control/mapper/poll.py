"""``POST /machine/map``: the map long poll and lite updates (docs/protocol/control.md §4).

Request shapes (docs/protocol/control.md §4.1)::

    Stream  OmitPeers   what we do
    true    false       apply endpoints/hostinfo/disco key, mark online, register with the
                        batcher, send a full map, then deltas and keep-alives until the
                        client goes away; then offline after a grace period
    false   true        "lite" update: apply, fan out to peers, 200 with an empty body
    false   false       one full map message, then end

Body framing (docs/protocol/control.md §4.2): each message is ``u32 little-endian length | payload``
where the payload is a zstd frame of the JSON when the request asked for ``Compress: "zstd"``.
Keep-alives go out after KEEPALIVE_INTERVAL (+ jitter) without another message; the client
gives up after 120 s of silence.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import Any

import zstandard

from meshscale.control import models
from meshscale.control.auth.request import (
    NodeBindingError,
    decode_with_raw,
    field_of,
    lookup_node,
    sanitize_hostinfo,
    valid_addrport,
)
from meshscale.control.mapper.batcher import Batcher, MapSession
from meshscale.control.mapper.fullmap import length_prefixed
from meshscale.control.state import State
from meshscale.controlhttp import NoiseRequest, StreamAborted
from meshscale.io.http import Response
from meshscale.tailcfg import CAPVER_HOME_DERP, MapRequest

log = logging.getLogger(__name__)

# seconds; the client's watchdog fires at 120 s (docs/protocol/control.md §4.2)
KEEPALIVE_INTERVAL = 50.0
# Fraction of the interval added at random (Headscale: 0-9 s on 50 s) so streams do not align.
KEEPALIVE_JITTER = 0.18
# seconds a node stays online after its last stream ends (docs/protocol/control.md §7.5)
OFFLINE_GRACE = 10.0
# seconds a subnet router or exit node stays an HA candidate after its last stream ends
# (docs/protocol/policy.md §5.6): a brief reconnect does not move its routes, a router
# that went down fails over within ROUTE_GRACE plus one map fan-out (well inside 10 s).
ROUTE_GRACE = 4.0
BATCH_DELAY = 0.005  # seconds to wait after a wake-up so bursts coalesce into one message
# At scale a stream also keeps a minimum gap between its messages, growing with the number of
# open streams: one change costs every stream a message (about 20-25 us of CPU each since the
# batcher's tick writes them), so with a gap of 30 us per stream the fan-out uses at most
# about 3/4 of a core however fast changes arrive (Headscale's batcher ticks for the same
# reason). The first change after a quiet period still goes out after BATCH_DELAY only.
MESSAGE_GAP_PER_STREAM = 30e-6  # seconds per open stream
MAX_MESSAGE_GAP = 1.0  # seconds
# The batcher's fan-out tick is spaced by what it costs, measured: the next tick starts no
# sooner than FANOUT_SPACING times the last tick's duration after that tick started, so the
# fan-out takes at most about 1/FANOUT_SPACING of the loop (the rest serves joins and
# requests) and every change that arrives meanwhile goes out in that next tick. With
# MAX_MESSAGE_GAP this bounds a change's wait at about 1 s + one tick (issue #14 goal 4: at
# 10,000 streams a tick costs ~0.15-0.3 s, so the spacing is ~0.3-0.6 s). The budget is a
# bucket of FANOUT_BURST ticks: a change after a quiet spell goes out at once even when the
# last tick was recent (a plain spacing made an isolated change wait out the gap: p50 at
# 2,000 streams 0.4 -> 1.0 s under load); a stream of changes still gets 1/FANOUT_SPACING.
# 3 rather than 2: a ramp of 10,000 joins took 133 -> 105 s and 103 -> 85 s of server CPU
# (fewer ticks, each carrying more joins), change p99 368 -> 373 ms (same run; isolated
# changes still go out at once from the bucket).
FANOUT_SPACING = 3.0
FANOUT_BURST = 2.0
MAX_ENDPOINTS = 64  # per node: a client reporting endless endpoints
KEEPALIVE_JSON = b'{"KeepAlive":true}'


_compressor: zstandard.ZstdCompressor | None = None


def frame(payload_json: bytes, compress: bool) -> bytes:
    """One map-stream message: little-endian length, then (zstd-compressed) JSON.

    One compressor is reused (each call emits a complete, independent frame); creating a
    zstd context per message costs more than compressing a small delta."""
    global _compressor
    if compress:
        if _compressor is None:
            _compressor = zstandard.ZstdCompressor(level=3)
        body = _compressor.compress(payload_json)
    else:
        body = payload_json
    return length_prefixed(body)


class MapHandler:
    """Serves /machine/map over Noise.

    Parameters:
      state: the State; batcher: the Batcher fed by the change pump.
      clock: wall-clock UTC datetime; monotonic: seconds for timers;
      jitter: returns a float in [0, 1) (keep-alive spread).
    """

    def __init__(
        self,
        state: State,
        batcher: Batcher,
        clock: Callable[[], datetime],
        *,
        jitter: Callable[[], float],
        keepalive_interval: float = KEEPALIVE_INTERVAL,
        offline_grace: float = OFFLINE_GRACE,
        batch_delay: float = BATCH_DELAY,
        route_grace: float = ROUTE_GRACE,
    ) -> None:
        self.state = state
        self.batcher = batcher
        self.clock = clock
        self.jitter = jitter
        self.keepalive_interval = keepalive_interval
        self.offline_grace = offline_grace
        self.route_grace = route_grace
        self._standby_timers: dict[int, asyncio.TimerHandle] = {}
        self.batch_delay = batch_delay
        self._offline_timers: dict[int, asyncio.TimerHandle] = {}
        self._keepalive_frames = {c: frame(KEEPALIVE_JSON, c) for c in (False, True)}
        self.streams_open = 0
        # The fan-out budget (fanout_delay): seconds of tick the loop may spend at once, as
        # of the start of the last tick accounted for (its cost charged).
        self._credit = 0.0
        self._credit_at = -1.0  # that tick's start
        batcher.enable_direct(clock, frame, self.fanout_delay)

    async def __call__(self, req: NoiseRequest) -> Response:
        decoded = decode_with_raw(MapRequest, req)
        if isinstance(decoded, Response):
            return decoded
        mr, raw = decoded
        if mr.NodeKey is None:
            return Response.text(400, "node key is required\n")
        try:
            node = lookup_node(self.state, req.machine_key, mr.NodeKey)
        except NodeBindingError:
            return Response.text(
                404, "node key in request does not match the one associated with this machine key\n"
            )
        if node is None:
            return Response.text(404, "node not found\n")
        if node.is_expired(self.clock()):
            # Revoked (issue #12): nothing it reports is stored or fanned out; a stream
            # still gets the one map telling it its key expired (batcher._revoked_map).
            if not mr.Stream and mr.OmitPeers:
                return Response.text(403, "node key expired: log in again\n")
        else:
            try:
                node = self._apply(node, mr, raw)
            except models.StateError as exc:
                return Response.text(400, f"{exc}\n")
        compress = mr.Compress == "zstd"
        legacy = mr.Version < CAPVER_HOME_DERP
        if not mr.Stream:
            if mr.OmitPeers:
                return Response(200, b"")
            session = MapSession(node.id)
            msg = self.batcher.build(session, self.clock())
            if msg is None:  # the node vanished between lookup and build
                return Response.text(404, "node not found\n")
            return Response(200, self.batcher.encode(msg, compress, frame, legacy_derp=legacy))
        return Response(200, self._stream(node.id, compress, req.push, legacy_derp=legacy))

    def _apply(self, node: models.Node, mr: MapRequest, raw: dict[str, Any]) -> models.Node:
        """Store what the client reports (Headscale applies this before the first map)."""
        hostinfo = sanitize_hostinfo(field_of(raw, "Hostinfo"))
        # Peers parse every endpoint as netip.AddrPort: one bad string would break their maps.
        endpoints = (
            [e for e in mr.Endpoints if valid_addrport(e)][:MAX_ENDPOINTS] if mr.Endpoints else None
        )
        return self.state.update_node(
            node.id, hostinfo=hostinfo, endpoints=endpoints, disco_key=mr.DiscoKey
        )

    async def _stream(
        self,
        node_id: models.NodeID,
        compress: bool,
        push: Callable[[bytes], bool] | None = None,
        *,
        legacy_derp: bool = False,
    ) -> AsyncIterator[bytes]:
        # With ``push`` the batcher's tick writes deltas while this task idles (batcher.py).
        session = MapSession(node_id, push, compress, legacy_derp=legacy_derp)
        self.batcher.add(session)
        self.streams_open += 1
        timer = self._offline_timers.pop(node_id, None)
        if timer is not None:
            timer.cancel()
        loop = asyncio.get_running_loop()
        interval = self.keepalive_interval * (1 + KEEPALIVE_JITTER * self.jitter())
        session.last_write = loop.time()
        keepalive_due = False
        sent = 0.0  # time of the first message; 0 while nothing went out
        handle: asyncio.TimerHandle | None = None

        # One timer per keep-alive interval (not one timeout per wait): it fires, and either
        # asks for a keep-alive or, if a message went out meanwhile, re-arms from that write.
        def on_timer() -> None:
            nonlocal keepalive_due, handle
            due = session.last_write + interval
            if loop.time() >= due - 0.001:
                keepalive_due = True
                session.wake.set()
                due = loop.time() + interval
            handle = loop.call_at(due, on_timer)

        handle = loop.call_at(session.last_write + interval, on_timer)
        try:
            try:
                self.state.set_online(node_id, True)
                self._cancel_standby(node_id)
            except models.NotFound:
                raise StreamAborted(404, "node not found\n") from None
            while not session.closed:
                if session.unsent:  # built by the tick before anything now pending
                    data, session.unsent = session.unsent, b""
                    yield data
                    data = b""
                    session.last_write = loop.time()
                msg = self.batcher.build(session, self.clock())
                if msg is not None:
                    data = self.batcher.encode(msg, compress, frame, legacy_derp=legacy_derp)
                    msg = None  # do not pin the message while the stream idles
                    yield data
                    data = b""
                    session.last_write = sent = loop.time()
                elif not sent and session.closed:
                    raise StreamAborted(404, "node not found\n")
                while not session.closed:
                    session.wake.clear()
                    if not session.pending.empty() or session.unsent:
                        break
                    if keepalive_due:
                        keepalive_due = False
                        yield self._keepalive_frames[compress]
                        session.last_write = loop.time()
                        continue
                    session.idle = True
                    try:
                        await session.wake.wait()
                    finally:
                        session.idle = False
                delay = self.coalesce_delay(session.last_write, loop.time())
                if delay > 0 and not session.closed:
                    await asyncio.sleep(delay)
        finally:
            if handle is not None:
                handle.cancel()
            self.batcher.remove(session)
            self.streams_open -= 1
            if self.batcher.session_count(node_id) == 0:
                self._schedule_offline(node_id, loop)
                self._schedule_standby(node_id, loop)

    def coalesce_delay(self, last_write: float, now: float) -> float:
        """How long a woken session waits for more changes before building its message."""
        if self.batch_delay <= 0:
            return 0.0
        gap = min(MAX_MESSAGE_GAP, MESSAGE_GAP_PER_STREAM * self.batcher.session_count())
        return max(self.batch_delay, last_write + gap - now)

    def fanout_delay(self, last_tick: float, now: float, cost: float) -> float:
        """How long the batcher's fan-out tick waits after a change: BATCH_DELAY to
        coalesce a burst, and until the fan-out budget holds one more tick like the last
        (it fills at 1/FANOUT_SPACING of wall time, up to FANOUT_BURST ticks; each tick
        spends its ``cost``), at most MAX_MESSAGE_GAP."""
        if self.batch_delay <= 0:
            return 0.0
        cap = FANOUT_BURST * cost
        if last_tick != self._credit_at:  # a tick ran since: charge it
            filled = self._credit + max(0.0, last_tick - self._credit_at) / FANOUT_SPACING
            self._credit = min(cap, filled) - cost
            self._credit_at = last_tick
        have = min(cap, self._credit + max(0.0, now - self._credit_at) / FANOUT_SPACING)
        wait = (cost - have) * FANOUT_SPACING
        return max(self.batch_delay, min(MAX_MESSAGE_GAP, wait))

    def _cancel_standby(self, node_id: models.NodeID) -> None:
        t = self._standby_timers.pop(node_id, None)
        if t is not None:
            t.cancel()
        self.state.set_route_standby(node_id, False)

    def _schedule_standby(self, node_id: models.NodeID, loop: asyncio.AbstractEventLoop) -> None:
        """A router without a stream stops being an HA candidate after the route grace."""

        def standby() -> None:
            self._standby_timers.pop(node_id, None)
            if self.batcher.session_count(node_id) == 0:
                self.state.set_route_standby(node_id, True)

        try:
            node = self.state.get_node(node_id)
        except models.NotFound:
            return
        if not node.hostinfo.get("RoutableIPs"):
            return
        old = self._standby_timers.pop(node_id, None)
        if old is not None:
            old.cancel()
        self._standby_timers[node_id] = loop.call_later(self.route_grace, standby)

    def _schedule_offline(self, node_id: models.NodeID, loop: asyncio.AbstractEventLoop) -> None:
        def offline() -> None:
            self._offline_timers.pop(node_id, None)
            if self.batcher.session_count(node_id) == 0:
                try:
                    self.state.set_online(node_id, False)
                except models.NotFound:
                    pass

        if self.offline_grace <= 0:
            offline()
            return
        old = self._offline_timers.pop(node_id, None)
        if old is not None:
            old.cancel()
        self._offline_timers[node_id] = loop.call_later(self.offline_grace, offline)

    def close(self) -> None:
        for t in [*self._offline_timers.values(), *self._standby_timers.values()]:
            t.cancel()
        self._offline_timers.clear()
        self._standby_timers.clear()
