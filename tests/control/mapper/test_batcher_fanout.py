"""The fan-out tick's per-delta memo (batcher._facts_of, _visible with a key) against the
same batcher computing every session's view afresh: whatever the events, tailnets and
policy-hidden nodes, every session is written the same messages."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshscale.control.mapper import mapper
from meshscale.control.mapper.batcher import Batcher, MapSession, Pending, _DeltaKey, _Facts
from meshscale.control.models import (
    Node,
    NodeAdded,
    NodeChanged,
    NodeID,
    NodeRemoved,
    TailnetID,
    User,
    UserID,
)
from meshscale.testing.mapsource import DERP, NOW, DictSource, numbered_node

CFG = mapper.MapConfig(base_domain="ts.example", domain="c", derp_map=DERP)
VIEWERS = (1, 2, 3, 4, 5, 6)  # the nodes holding streams


class PolicySource(DictSource):
    """Nodes in one or two tailnets (1 and 2); a node in ``hidden`` is seen only by node 1.
    As State says: who may see a node is "everyone" (None) only while there is one tailnet
    and nothing is hidden."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden: set[int] = set()

    def _sees(self, viewer: int, peer: Node) -> bool:
        return int(peer.id) not in self.hidden or viewer == 1

    def peers_of(self, node_id: int) -> list[Node]:
        me = self.nodes[node_id]
        return [
            n
            for n in super().peers_of(node_id)
            if n.tailnet_id == me.tailnet_id and self._sees(node_id, n)
        ]

    def viewers_of(self, node_id: int) -> set[int] | None:
        if node_id in self.hidden:
            return {1}
        if all(n.tailnet_id == 1 for n in self.nodes.values()):
            return None
        me = self.nodes.get(node_id)
        return {
            i for i, n in self.nodes.items() if me is not None and n.tailnet_id == me.tailnet_id
        }

    def users(self) -> dict[UserID, User]:
        return {
            UserID(1): User(UserID(1), "alice"),
            UserID(2): User(UserID(2), "bob", tailnet_id=TailnetID(2)),
        }


class Fresh(Batcher):
    """No memo: facts and views computed per session."""

    def _facts_of(self, key: _DeltaKey, p: Pending) -> _Facts:
        self._facts.clear()
        return super()._facts_of(key, p)

    def _visible(self, session: MapSession, p: Pending, key: _DeltaKey | None = None) -> Pending:
        return self._visible_now(session, p)


def node(i: int, tailnet: int) -> Node:
    return numbered_node(
        i, tailnet_id=TailnetID(tailnet), user_id=UserID(tailnet), hostinfo={"Hostname": f"h{i}"}
    )


ops = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.integers(7, 14), st.integers(1, 2)),
        st.tuples(st.just("remove"), st.integers(2, 14), st.just(0)),
        st.tuples(st.just("endpoints"), st.integers(1, 14), st.integers(1, 60000)),
        st.tuples(st.just("rename"), st.integers(1, 14), st.integers(0, 9)),
        st.tuples(st.just("hide"), st.integers(1, 14), st.booleans()),
        st.tuples(st.just("tick"), st.just(0), st.just(0)),
    ),
    max_size=30,
)


def edit(src: DictSource, b: Batcher, kind: str, nid: int, arg: int) -> None:
    """An endpoint change or a rename of node ``nid`` (steps the fan-out properties share)."""
    n = src.nodes[nid]
    if kind == "endpoints":
        src.nodes[nid] = replace(n, endpoints=(f"192.0.2.1:{arg}",))
        b.handle(NodeChanged(NodeID(nid), frozenset({"endpoints"})))
    else:
        src.nodes[nid] = replace(n, given_name=f"r{arg}")
        b.handle(NodeChanged(NodeID(nid), frozenset({"given_name"})))


def run(
    cls: type[Batcher], program: list[tuple[str, int, int]], two: bool = False
) -> dict[int, list[Any]]:
    src = PolicySource()
    for i in VIEWERS:
        src.nodes[i] = node(i, 2 if two and i > 4 else 1)
    b = cls(src, lambda: CFG)  # type: ignore[arg-type]
    out: dict[int, list[Any]] = {i: [] for i in VIEWERS}

    async def go() -> None:
        b.enable_direct(lambda: NOW, lambda data, _c: data, lambda _l, _n, _c: 0.0)
        sessions = {}
        for i in VIEWERS:
            s = sessions[i] = MapSession(NodeID(i), push=lambda d, i=i: not out[i].append(d))
            b.add(s)
            assert b.build(s, NOW) is not None  # the poll task's full map
            s.idle = True
        for kind, nid, arg in program:
            n = src.nodes.get(nid)
            if kind == "add" and n is None:
                src.nodes[nid] = node(nid, arg)
                b.handle(NodeAdded(NodeID(nid)))
            elif kind == "remove" and n is not None and nid not in VIEWERS:
                del src.nodes[nid]
                b.handle(NodeRemoved(NodeID(nid), tailnet_id=n.tailnet_id))
            elif kind in ("endpoints", "rename") and n is not None:
                edit(src, b, kind, nid, arg)
            elif kind == "hide" and n is not None:
                (src.hidden.add if arg else src.hidden.discard)(nid)
                src.nodes[nid] = replace(n, given_name=f"{n.given_name}x")
                b.handle(NodeChanged(NodeID(nid), frozenset({"given_name"})))
            elif kind == "tick":
                b._fanout()
        b._fanout()
        for s in sessions.values():  # what the tick could not write, the task builds
            if not s.pending.empty():
                msg = b.build(s, NOW)
                if msg is not None:
                    out[int(s.node_id)].append(mapper.encode(msg, b.cache))

    asyncio.run(go())
    return {i: [json.loads(d) for d in msgs] for i, msgs in out.items()}


@pytest.mark.slow
@settings(max_examples=120, deadline=None)
@given(ops, st.booleans())
def test_memoised_fanout_writes_what_a_fresh_one_does(
    program: list[tuple[str, int, int]], two: bool
) -> None:
    assert run(Batcher, program, two) == run(Fresh, program, two)


def test_memo_is_used_for_sessions_of_one_tailnet() -> None:
    """The memo is not idle: a batch of joins reaching 6 sessions of one tailnet is one
    view; with two tailnets (the policy names viewers) each session's is its own."""
    seen: list[int] = []

    class Counting(Batcher):
        def _visible_now(self, session: MapSession, p: Pending) -> Pending:
            seen.append(int(session.node_id))
            return super()._visible_now(session, p)

    program = [("add", 8, 1), ("add", 9, 1), ("tick", 0, 0)]
    out = run(Counting, program)
    assert len(seen) == 1, seen
    for i in VIEWERS:
        assert [p["ID"] for p in out[i][0]["PeersChanged"]] == [8, 9], out[i]
    seen.clear()
    out = run(Counting, program, two=True)
    assert sorted(seen) == list(VIEWERS), seen
    assert out[5] == [] and out[6] == [], out  # another tailnet's joins: nothing
    assert [p["ID"] for p in out[2][0]["PeersChanged"]] == [8, 9], out[2]
