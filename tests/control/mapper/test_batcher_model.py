"""batcher against a model client: whatever the order of changes and flushes, a client that
applies the messages as tailscale's controlclient does (docs/protocol/control.md §4.3) ends with the
server's view."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from meshscale.control.mapper import mapper
from meshscale.control.mapper.batcher import Batcher, MapSession
from meshscale.control.models import (
    DNSChanged,
    Node,
    NodeAdded,
    NodeChanged,
    NodeID,
    NodeRemoved,
)
from meshscale.testing.mapsource import DERP, NOW, DictSource, numbered_node

CFG = mapper.MapConfig(base_domain="ts.example", domain="c", derp_map=DERP)


def node(i: int) -> Node:
    return numbered_node(i, hostinfo={"Hostname": f"h{i}"})


class ModelClient:
    """controlclient's peer bookkeeping (map.go updatePeersStateFromResponse), reduced."""

    def __init__(self) -> None:
        self.peers: dict[int, dict[str, Any]] = {}

    def apply(self, msg: dict[str, Any]) -> None:
        if msg.get("Peers"):
            self.peers = {p["ID"]: dict(p) for p in msg["Peers"]}
            return
        for nid in msg.get("PeersRemoved", []):
            self.peers.pop(nid, None)
        for p in msg.get("PeersChanged", []):
            self.peers[p["ID"]] = dict(p)
        for nid, seen in msg.get("PeerSeenChange", {}).items():
            p = self.peers.get(int(nid))
            if p is not None:
                if seen:
                    p["LastSeen"] = "client-now"
                else:
                    p.pop("LastSeen", None)
        for nid, online in msg.get("OnlineChange", {}).items():
            p = self.peers.get(int(nid))
            if p is not None:
                p["Online"] = online
        for pc in msg.get("PeersChangedPatch", []):
            p = self.peers.get(pc["NodeID"])
            if p is None:
                continue
            if "Endpoints" in pc:
                p["Endpoints"] = pc["Endpoints"]
            if "DERPRegion" in pc:
                p["HomeDERP"] = pc["DERPRegion"]
            if "Online" in pc:
                p["Online"] = pc["Online"]
            if "DiscoKey" in pc:
                p["DiscoKey"] = pc["DiscoKey"]
            if "LastSeen" in pc:
                p["LastSeen"] = pc["LastSeen"]


ops = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.integers(2, 8)),
        st.tuples(st.just("remove"), st.integers(2, 8)),
        st.tuples(st.just("endpoints"), st.integers(2, 8), st.integers(1, 60000)),
        st.tuples(st.just("online"), st.integers(2, 8), st.booleans()),
        st.tuples(st.just("rename"), st.integers(2, 8), st.integers(0, 9)),
        st.tuples(st.just("derp"), st.integers(2, 8), st.integers(0, 3)),
        st.tuples(st.just("resync"), st.just(0)),
        st.tuples(st.just("flush"), st.just(0)),
    ),
    max_size=40,
)


@pytest.mark.slow
@settings(max_examples=150)
@given(ops)
@example([("add", 2), ("flush", 0), ("derp", 2, 1), ("flush", 0), ("derp", 2, 2), ("flush", 0)])
@example([("add", 3), ("online", 3, False), ("remove", 3), ("resync", 0)])
def test_client_view_converges_to_server_view(program: list[tuple[Any, ...]]) -> None:
    src = DictSource()
    src.nodes[1] = node(1)
    b = Batcher(src, lambda: CFG)  # type: ignore[arg-type]
    session = MapSession(NodeID(1))
    b.add(session)
    client = ModelClient()

    def flush() -> None:
        msg = b.build(session, NOW)
        if msg is not None:
            client.apply(msg)

    flush()
    for op in program:
        kind, nid = op[0], op[1]
        if kind == "add" and nid not in src.nodes:
            src.nodes[nid] = node(nid)
            b.handle(NodeAdded(NodeID(nid)))
        elif kind == "remove" and nid in src.nodes:
            del src.nodes[nid]
            b.handle(NodeRemoved(NodeID(nid)))
        elif kind == "endpoints" and nid in src.nodes:
            src.nodes[nid] = replace(src.nodes[nid], endpoints=(f"192.0.2.1:{op[2]}",))
            b.handle(NodeChanged(NodeID(nid), frozenset({"endpoints"})))
        elif kind == "online" and nid in src.nodes:
            src.nodes[nid] = replace(src.nodes[nid], online=op[2], last_seen=NOW)
            b.handle(NodeChanged(NodeID(nid), frozenset({"online", "last_seen"})))
        elif kind == "rename" and nid in src.nodes:
            src.nodes[nid] = replace(src.nodes[nid], given_name=f"n{nid}x{op[2]}")
            b.handle(NodeChanged(NodeID(nid), frozenset({"given_name"})))
        elif kind == "derp" and nid in src.nodes:
            hi = {"Hostname": f"h{nid}", "NetInfo": {"PreferredDERP": 900 + op[2]}}
            if op[2] == 0:
                hi = {"Hostname": f"h{nid}"}  # no home region: not patchable
            src.nodes[nid] = replace(src.nodes[nid], hostinfo=hi)
            b.handle(NodeChanged(NodeID(nid), frozenset({"hostinfo"})))
        elif kind == "resync":
            b.handle(DNSChanged())
        elif kind == "flush":
            flush()
    flush()
    want = {
        i: mapper.to_json(mapper.tail_node(n, CFG, NOW)) for i, n in src.nodes.items() if i != 1
    }
    assert set(client.peers) == set(want)
    for i, p in client.peers.items():
        for field in ("Name", "Endpoints", "Online", "Key", "DiscoKey", "HomeDERP"):
            assert p.get(field) == want[i].get(field), (i, field)
        # LastSeen is present exactly for offline peers (its value may be the client's clock).
        assert ("LastSeen" in p) == ("LastSeen" in want[i]), (i, p, want[i])
