"""snapshot: a full map assembled from the shared snapshot (its peers' dicts and the chunks'
compressed frames) decodes to exactly the map built the ordinary way (State's peer list,
every peer walked), whatever happened to the nodes in between."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshscale.control.mapper import fullmap, snapshot
from meshscale.control.mapper.batcher import Batcher, MapSession
from meshscale.control.mapper.poll import frame
from meshscale.control.models import Node, NodeAdded, NodeChanged, NodeID, NodeRemoved
from meshscale.testing.mapsource import NOW, DictSource, numbered_node

from .test_fullmap import CFG, message_json

ops = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.integers(1, 40)),
        st.tuples(st.just("remove"), st.integers(1, 40)),
        st.tuples(st.just("endpoints"), st.integers(1, 40)),
        st.tuples(st.just("expiry"), st.integers(1, 40)),
        st.tuples(st.just("map"), st.integers(1, 40)),
    ),
    max_size=25,
)


class Ordinary(Batcher):
    def _snapshot_peers(self, *_: Any) -> None:
        return None


def build(b: Batcher, nid: int) -> tuple[dict[str, Any], bytes]:
    s = MapSession(NodeID(nid), compress=True)
    b.add(s)
    msg = b.build(s, NOW)
    assert msg is not None
    return msg, message_json(b.encode(msg, True, frame))


@settings(max_examples=40, deadline=None)
@given(program=ops, chunk=st.sampled_from([1, 4, 16]))
def test_snapshot_full_map_equals_a_fresh_one(program: list[tuple[str, int]], chunk: int) -> None:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fullmap, "MIN_PEERS", 3)
        check(program, chunk)


def check(program: list[tuple[str, int]], chunk: int) -> None:
    src = DictSource([numbered_node(i) for i in range(1, 21)])
    b = Batcher(src, lambda: CFG)  # type: ignore[arg-type]
    b.snap = snapshot.Snapshot(b.chunks.compress, chunk)
    ref = Ordinary(src, lambda: CFG)  # type: ignore[arg-type]
    used = 0

    def event(ev: NodeAdded | NodeChanged | NodeRemoved) -> None:
        b.handle(ev)
        ref.handle(ev)

    for kind, nid in program:
        n: Node | None = src.nodes.get(nid)
        if kind == "add" and n is None:
            src.nodes[nid] = numbered_node(nid)
            event(NodeAdded(NodeID(nid)))
        elif kind == "remove" and n is not None:
            del src.nodes[nid]
            event(NodeRemoved(NodeID(nid)))
        elif kind == "endpoints" and n is not None:
            src.nodes[nid] = replace(n, endpoints=(f"192.0.2.1:{len(n.endpoints) + 1}",))
            event(NodeChanged(NodeID(nid), frozenset({"endpoints"})))
        elif kind == "expiry" and n is not None:  # time-dependent JSON: not shared
            src.nodes[nid] = replace(n, expiry=NOW + timedelta(hours=1 - nid % 2))
            event(NodeChanged(NodeID(nid), frozenset({"expiry"})))
        elif kind == "map" and n is not None:
            msg, data = build(b, nid)
            want_msg, want = build(ref, nid)
            assert data == want
            assert msg == want_msg
            used += isinstance(msg.get("Peers"), snapshot.SnapshotPeers)
    for nid in sorted(src.nodes)[:3]:
        msg, data = build(b, nid)
        assert data == build(ref, nid)[1]
        used += isinstance(msg.get("Peers"), snapshot.SnapshotPeers)
    if len(src.nodes) > 4 and all(n.expiry is None for n in src.nodes.values()):
        assert used, "the snapshot path was never taken"


def test_a_node_event_rebuilds_only_its_chunk() -> None:
    n = 2 * fullmap.MIN_PEERS
    src = DictSource([numbered_node(i) for i in range(1, n + 1)])
    b = Batcher(src, lambda: CFG)  # type: ignore[arg-type]
    build(b, 1)
    whole = b.snap.rebuilt
    assert whole == n // fullmap.CHUNK + 1
    build(b, 2)
    assert b.snap.rebuilt == whole  # nothing changed: nothing rebuilt
    src.nodes[300] = replace(src.nodes[300], endpoints=("192.0.2.9:1",))
    b.handle(NodeChanged(NodeID(300), frozenset({"endpoints"})))
    msg, data = build(b, 3)
    assert b.snap.rebuilt == whole + 1
    assert b'"192.0.2.9:1"' in data
    src.nodes[n + 1] = numbered_node(n + 1)
    b.handle(NodeAdded(NodeID(n + 1)))
    msg, data = build(b, 4)
    assert [p["ID"] for p in msg["Peers"]] == [i for i in range(1, n + 2) if i != 4]
