"""poll: /machine/map request shapes, framing, streaming, keep-alives, online/offline."""

from __future__ import annotations

import asyncio
import json
import random
import struct
from datetime import UTC, datetime

import pytest
import zstandard

from meshscale.control.mapper import mapper
from meshscale.control.mapper.batcher import Batcher, SnapshotSource
from meshscale.control.mapper.poll import MapHandler, frame
from meshscale.control.state import State
from meshscale.controlhttp import NoiseRequest
from meshscale.key import DiscoPrivate, MachinePrivate, MachinePublic, NodePrivate
from meshscale.tailcfg import DERPMap, DERPNode, DERPRegion, MapRequest, dumps

DERP = DERPMap(Regions={900: DERPRegion(900, "x", "X", Nodes=[DERPNode("900a", 900, "d")])})
CFG = mapper.MapConfig(base_domain="ts.example", domain="ctl.example", derp_map=DERP)
MK = MachinePrivate(bytes([1]) * 32).public()
NK = NodePrivate(bytes([2]) * 32).public()
DK = DiscoPrivate(bytes([3]) * 32).public()


def unframe(data: bytes) -> list[dict[str, object]]:
    out = []
    while data:
        (n,) = struct.unpack_from("<I", data)
        body = data[4 : 4 + n]
        data = data[4 + n :]
        out.append(json.loads(zstandard.ZstdDecompressor().decompress(body)))
    return out


def test_frame_is_little_endian_length_and_zstd() -> None:
    f = frame(b'{"KeepAlive":true}', True)
    (n,) = struct.unpack_from("<I", f)
    assert n == len(f) - 4
    assert zstandard.ZstdDecompressor().decompress(f[4:]) == b'{"KeepAlive":true}'
    assert frame(b"{}", False) == b"\x02\x00\x00\x00{}"


def make(**kw: float) -> tuple[State, MapHandler, Batcher]:
    rng = random.Random(5)
    state = State.open(":memory:", rand=rng.randbytes, randbelow=rng.randrange)
    user = state.create_user("alice")
    state.register_node(MK, NK, user.id, {"Hostname": "alpha"})
    batcher = Batcher(SnapshotSource(state), lambda: CFG)
    handler = MapHandler(
        state, batcher, lambda: datetime(2026, 1, 1, tzinfo=UTC), jitter=lambda: 0.0, **kw
    )
    return state, handler, batcher


def mreq(machine: MachinePublic = MK, **kw: object) -> NoiseRequest:
    body = dumps(MapRequest(Version=130, Compress="zstd", NodeKey=NK, DiscoKey=DK, **kw))  # type: ignore[arg-type]
    return NoiseRequest("POST", "/machine/map", "", {}, body, machine, 130)


def test_lite_update_stores_and_answers_empty() -> None:
    state, h, _ = make()
    resp = asyncio.run(h(mreq(OmitPeers=True, Endpoints=["192.0.2.9:1", "bogus", "1.2.3.4"])))
    assert resp.status == 200
    assert resp.body == b""
    node = state.get_node_by_node_key(NK)
    assert node is not None
    assert node.endpoints == ("192.0.2.9:1",)
    assert node.disco_key == DK


def test_one_shot_map_is_one_full_message() -> None:
    _, h, _ = make()
    resp = asyncio.run(h(mreq()))
    assert resp.status == 200
    assert isinstance(resp.body, bytes)
    (msg,) = unframe(resp.body)
    assert msg["Node"]["Name"] == "alpha.ts.example."  # type: ignore[index]


def test_wrong_machine_and_unknown_node() -> None:
    _, h, _ = make()
    other = MachinePrivate(bytes([9]) * 32).public()
    assert asyncio.run(h(mreq(machine=other))).status == 404
    body = dumps(MapRequest(Version=130, NodeKey=NodePrivate(bytes([8]) * 32).public()))
    resp = asyncio.run(h(NoiseRequest("POST", "/machine/map", "", {}, body, MK, 130)))
    assert resp.status == 404
    assert asyncio.run(h(NoiseRequest("POST", "/machine/map", "", {}, b"{", MK, 130))).status == 400
    old = dumps(MapRequest(Version=90, NodeKey=NK))
    assert asyncio.run(h(NoiseRequest("POST", "/machine/map", "", {}, old, MK, 90))).status == 400


@pytest.mark.slow
def test_stream_full_then_keepalive_then_offline_after_grace() -> None:
    async def go() -> None:
        state, h, batcher = make(keepalive_interval=0.05, offline_grace=0.05, batch_delay=0.0)
        resp = await h(mreq(Stream=True))
        assert resp.status == 200
        assert not isinstance(resp.body, bytes)
        it = resp.body.__aiter__()
        first = unframe(await it.__anext__())[0]
        assert "Node" in first
        node = state.get_node_by_node_key(NK)
        assert node is not None
        assert node.online
        assert batcher.session_count(node.id) == 1
        ka = unframe(await asyncio.wait_for(it.__anext__(), 2))[0]
        assert ka == {"KeepAlive": True}
        await it.aclose()  # type: ignore[attr-defined]
        assert batcher.session_count(node.id) == 0
        assert state.get_node(node.id).online  # still within the grace period
        await asyncio.sleep(0.15)
        assert not state.get_node(node.id).online
        h.close()

    asyncio.run(go())


@pytest.mark.slow
def test_stream_ends_when_node_deleted() -> None:
    async def go() -> None:
        state, h, batcher = make(keepalive_interval=5, offline_grace=0, batch_delay=0.0)
        sub = state.subscribe()
        resp = await h(mreq(Stream=True))
        assert not isinstance(resp.body, bytes)
        it = resp.body.__aiter__()
        await it.__anext__()
        node = state.get_node_by_node_key(NK)
        assert node is not None
        state.delete_node(node.id)
        for ev in sub.drain():
            batcher.handle(ev)
        with pytest.raises(StopAsyncIteration):
            await asyncio.wait_for(it.__anext__(), 2)
        sub.close()

    asyncio.run(go())


def test_stream_for_a_node_deleted_before_it_starts_is_an_error_not_an_empty_200() -> None:
    from meshscale.controlhttp import StreamAborted

    async def go() -> None:
        state, h, _ = make(offline_grace=0, batch_delay=0.0)
        resp = await h(mreq(Stream=True))
        assert not isinstance(resp.body, bytes)
        node = state.get_node_by_node_key(NK)
        assert node is not None
        state.delete_node(node.id)
        with pytest.raises(StreamAborted):
            await resp.body.__anext__()

    asyncio.run(go())


def test_coalesce_delay_rate_limits_busy_streams_only() -> None:
    from meshscale.control.mapper.batcher import MapSession
    from meshscale.control.mapper.poll import MESSAGE_GAP_PER_STREAM
    from meshscale.control.models import NodeID

    _, h, batcher = make(batch_delay=0.005)
    for i in range(1000):
        batcher.add(MapSession(NodeID(i + 10)))
    # Quiet stream: only the base delay. Busy stream (wrote 10 ms ago): waits out the gap.
    assert h.coalesce_delay(last_write=0.0, now=100.0) == 0.005
    gap = 1000 * MESSAGE_GAP_PER_STREAM
    assert h.coalesce_delay(last_write=100.0, now=100.01) == pytest.approx(gap - 0.01)
    _, h0, _ = make(batch_delay=0.0)
    assert h0.coalesce_delay(last_write=100.0, now=100.0) == 0.0


def test_fanout_delay_follows_the_measured_tick_cost() -> None:
    from meshscale.control.mapper.poll import FANOUT_SPACING, MAX_MESSAGE_GAP

    _, h, _ = make(batch_delay=0.005)
    # No tick yet: only the base delay.
    assert h.fanout_delay(last_tick=0.0, now=100.0, cost=0.0) == 0.005
    # After a quiet spell, a 0.1 s tick at 100.0: a change right after it goes at once.
    assert h.fanout_delay(last_tick=100.0, now=100.2, cost=0.1) == 0.005
    # Changes without end (each tick costs 0.1 s): the ticks settle at one per
    # FANOUT_SPACING ticks' worth of time, so the fan-out takes 1/FANOUT_SPACING of the loop.
    t, starts = 100.2, []
    for _ in range(40):
        starts.append(t)
        t += 0.1 + h.fanout_delay(last_tick=t, now=t + 0.1, cost=0.1)
    period = (starts[-1] - starts[-11]) / 10
    assert period == pytest.approx(FANOUT_SPACING * 0.1, rel=0.05)
    # An expensive tick: the wait is capped.
    t += 1.0
    assert h.fanout_delay(last_tick=t, now=t + 60.0, cost=60.0) == MAX_MESSAGE_GAP
    _, h0, _ = make(batch_delay=0.0)
    assert h0.fanout_delay(last_tick=100.0, now=100.0, cost=0.1) == 0.0


@pytest.mark.slow
def test_router_stream_gone_past_route_grace_loses_primary_brief_reconnect_keeps_it() -> None:
    async def go() -> None:
        state, h, _ = make(keepalive_interval=5, offline_grace=5, batch_delay=0.0,
                           route_grace=0.1)  # fmt: skip
        node = state.get_node_by_node_key(NK)
        assert node is not None
        lan = "198.51.100.0/24"
        state.update_hostinfo(node.id, {"Hostname": "alpha", "RoutableIPs": [lan]})
        state.approve_routes(node.id, [lan])

        async def stream() -> object:
            resp = await h(mreq(Stream=True))
            assert not isinstance(resp.body, bytes)
            it = resp.body.__aiter__()
            await it.__anext__()
            return it

        it = await stream()
        assert [str(r) for r in state.get_node(node.id).primary_routes()] == [lan]
        await it.aclose()  # type: ignore[attr-defined]
        await asyncio.sleep(0.02)
        it = await stream()  # back within the grace: nothing moved
        await asyncio.sleep(0.2)
        assert [str(r) for r in state.get_node(node.id).primary_routes()] == [lan]
        await it.aclose()  # type: ignore[attr-defined]
        await asyncio.sleep(0.3)  # gone past the grace: no longer a candidate, still "online"
        n = state.get_node(node.id)
        assert n.online and n.route_standby and n.primary_routes() == ()
        h.close()

    asyncio.run(go())
