"""The fan-out tick written slice by slice (batcher.FANOUT_SLICE): whatever happens between
two slices (changes, joins, removals, a stream ending, another tick falling due), every
session's client ends with the server's view, and no session is written twice for one tick."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshscale.control.mapper import mapper
from meshscale.control.mapper.batcher import Batcher, MapSession
from meshscale.control.models import DNSChanged, Node, NodeAdded, NodeID, NodeRemoved
from meshscale.testing.mapsource import DERP, NOW, DictSource, numbered_node

from .test_batcher_fanout import edit
from .test_batcher_model import ModelClient

CFG = mapper.MapConfig(base_domain="ts.example", domain="c", derp_map=DERP)
VIEWERS = (1, 2, 3, 4, 5)  # the nodes holding streams (never removed)


def node(i: int) -> Node:
    return numbered_node(i, hostinfo={"Hostname": f"h{i}"})


ops = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.integers(6, 12), st.just(0)),
        st.tuples(st.just("remove"), st.integers(6, 12), st.just(0)),
        st.tuples(st.just("endpoints"), st.integers(1, 12), st.integers(1, 60000)),
        st.tuples(st.just("rename"), st.integers(1, 12), st.integers(0, 9)),
        st.tuples(st.just("resync"), st.just(0), st.just(0)),
        st.tuples(st.just("end"), st.integers(2, 5), st.just(0)),  # a stream goes away
        st.tuples(st.just("tick"), st.just(0), st.just(0)),
        st.tuples(st.just("slice"), st.just(0), st.just(0)),
    ),
    max_size=40,
)


def run(program: list[tuple[str, int, int]], size: int) -> tuple[dict[int, ModelClient], Any]:
    src = DictSource()
    for i in VIEWERS:
        src.nodes[i] = node(i)
    b = Batcher(src, lambda: CFG)  # type: ignore[arg-type]
    b.fanout_slice = size
    clients = {i: ModelClient() for i in VIEWERS}
    writes: dict[int, list[int]] = {i: [] for i in VIEWERS}  # tick index per write

    def push(i: int, data: bytes) -> bool:
        writes[i].append(b.events_handled)
        clients[i].apply(json.loads(data))
        return True

    async def go() -> None:
        b.enable_direct(lambda: NOW, lambda data, _c: data, lambda _l, _n, _c: 0.0)
        sessions: dict[int, MapSession] = {}
        for i in VIEWERS:
            s = sessions[i] = MapSession(NodeID(i), push=lambda d, i=i: push(i, d))
            b.add(s)
            msg = b.build(s, NOW)  # the poll task's full map
            assert msg is not None
            clients[i].apply(msg)
            s.idle = True
        for kind, nid, arg in program:
            n = src.nodes.get(nid)
            if kind == "add" and n is None:
                src.nodes[nid] = node(nid)
                b.handle(NodeAdded(NodeID(nid)))
            elif kind == "remove" and n is not None and nid not in VIEWERS:
                del src.nodes[nid]
                b.handle(NodeRemoved(NodeID(nid)))
            elif kind in ("endpoints", "rename") and n is not None:
                edit(src, b, kind, nid, arg)
            elif kind == "resync":
                b.handle(DNSChanged())
            elif kind == "end" and nid in sessions:
                b.remove(sessions.pop(nid))
                del clients[nid]
            elif kind == "tick":
                b._fanout()
            elif kind == "slice":
                b._write_slice()
        for _ in range(100):  # the pass in progress, then a last tick for what came meanwhile
            while b._pass is not None:
                b._write_slice()
            if not b._rearm and b._tick is None:
                break
            b._rearm = False
            b._fanout()
        assert b._pass is None
        for s in sessions.values():  # what the tick could not write, the task builds
            if not s.pending.empty():
                msg = b.build(s, NOW)
                if msg is not None:
                    clients[int(s.node_id)].apply(msg)

    asyncio.run(go())
    return clients, src


@pytest.mark.slow
@settings(max_examples=150, deadline=None)
@given(ops, st.integers(1, 3))
def test_sliced_fanout_converges_to_server_view(
    program: list[tuple[str, int, int]], size: int
) -> None:
    clients, src = run(program, size)
    for me, client in clients.items():
        nodes = {i: n for i, n in src.nodes.items() if i != me}
        want = {i: mapper.to_json(mapper.tail_node(n, CFG, NOW)) for i, n in nodes.items()}
        assert set(client.peers) == set(want), me
        for i, p in client.peers.items():
            for field in ("Name", "Endpoints", "Key", "DiscoKey"):
                assert p.get(field) == want[i].get(field), (me, i, field)


def test_a_tick_is_written_over_several_loop_turns() -> None:
    """Five streams, slices of two: three turns; a change between them waits for the pass."""
    src = DictSource(node(i) for i in VIEWERS)
    b = Batcher(src, lambda: CFG)  # type: ignore[arg-type]
    b.fanout_slice = 2
    got: list[int] = []

    async def go() -> None:
        b.enable_direct(lambda: NOW, lambda data, _c: data, lambda _l, _n, _c: 0.0)
        for i in VIEWERS:
            s = MapSession(NodeID(i), push=lambda d, i=i: not got.append(i))
            b.add(s)
            b.build(s, NOW)
            s.idle = True
        src.nodes[9] = node(9)
        b.handle(NodeAdded(NodeID(9)))
        b._fanout()
        assert len(got) == 2 and b._pass is not None
        src.nodes[10] = node(10)
        b.handle(NodeAdded(NodeID(10)))  # during the pass: the next tick, after it
        assert b._tick is None and b._rearm
        await asyncio.sleep(0)  # the loop runs the next slices
        await asyncio.sleep(0)
        assert sorted(got) == list(VIEWERS) and b._pass is None
        assert b._tick is not None  # re-armed at the end of the pass
        await asyncio.sleep(0.01)
        assert sorted(got) == sorted([*VIEWERS, *VIEWERS])

    asyncio.run(go())
