"""batcher: per-session coalescing of change events, shared deltas, no full recomputation."""

from __future__ import annotations

from dataclasses import replace

from meshscale.control.mapper import mapper
from meshscale.control.mapper.batcher import Batcher, MapSession
from meshscale.control.mapper.poll import frame
from meshscale.control.models import (
    DNSChanged,
    NodeAdded,
    NodeChanged,
    NodeID,
    NodeRemoved,
    PolicyChanged,
    UserChanged,
    UserID,
)
from meshscale.testing.mapsource import DERP, NOW, DictSource, numbered_node

CFG = mapper.MapConfig(base_domain="ts.example", domain="control.example", derp_map=DERP)
node = numbered_node


def setup(n: int) -> tuple[DictSource, Batcher, list[MapSession]]:
    src = DictSource([node(i) for i in range(1, n + 1)])
    b = Batcher(src, lambda: CFG)  # type: ignore[arg-type]
    sessions = [MapSession(NodeID(i)) for i in range(1, n + 1)]
    for s in sessions:
        b.add(s)
        first = b.build(s, NOW)
        assert first is not None
        assert "Node" in first
    return src, b, sessions


def test_first_message_is_full_then_nothing() -> None:
    _, b, sessions = setup(3)
    assert sessions[0].started
    assert b.build(sessions[0], NOW) is None


def test_node_added_goes_to_everyone_else_as_peers_changed() -> None:
    src, b, sessions = setup(3)
    src.nodes[4] = node(4)
    b.handle(NodeAdded(NodeID(4)))
    for s in sessions:
        assert s.wake.is_set()
        msg = b.build(s, NOW)
        assert msg is not None
        assert [p["ID"] for p in msg["PeersChanged"]] == [4]


def test_changes_coalesce_and_patchable_fields_become_patches() -> None:
    src, b, sessions = setup(3)
    src.nodes[2] = replace(src.nodes[2], endpoints=("198.51.100.1:1",))
    b.handle(NodeChanged(NodeID(2), frozenset({"endpoints"})))
    src.nodes[2] = replace(src.nodes[2], online=True)
    b.handle(NodeChanged(NodeID(2), frozenset({"online", "last_seen"})))
    msg = b.build(sessions[0], NOW)
    assert msg is not None
    assert msg["PeersChangedPatch"] == [
        {"NodeID": 2, "Endpoints": ["198.51.100.1:1"], "Online": True}
    ]
    assert "PeersChanged" not in msg
    # The node itself sees its new endpoints in its self Node, and no peer fields.
    me = b.build(sessions[1], NOW)
    assert me is not None
    assert set(me) == {"Node"}
    assert me["Node"]["Endpoints"] == ["198.51.100.1:1"]
    # An online flip alone is not echoed to the node itself.
    src.nodes[2] = replace(src.nodes[2], online=False)
    b.handle(NodeChanged(NodeID(2), frozenset({"online", "last_seen"})))
    assert b.build(sessions[1], NOW) is None


def test_non_patchable_change_sends_full_node_and_self_update() -> None:
    src, b, sessions = setup(2)
    src.nodes[2] = replace(src.nodes[2], given_name="renamed")
    b.handle(NodeChanged(NodeID(2), frozenset({"given_name"})))
    other = b.build(sessions[0], NOW)
    assert other is not None
    assert other["PeersChanged"][0]["Name"] == "renamed.ts.example."
    me = b.build(sessions[1], NOW)
    assert me is not None
    assert me["Node"]["Name"] == "renamed.ts.example."


def test_one_change_builds_one_shared_delta_and_no_full_maps() -> None:
    src, b, sessions = setup(50)
    calls_before, fulls_before = src.peers_calls, b.full_maps_built
    src.nodes[7] = replace(src.nodes[7], endpoints=("203.0.113.9:9",))
    b.handle(NodeChanged(NodeID(7), frozenset({"endpoints"})))
    msgs = [b.build(s, NOW) for s in sessions if s.node_id != 7]
    assert src.peers_calls == calls_before  # nobody's full map was recomputed
    assert b.full_maps_built == fulls_before
    assert b.deltas_built == 1
    assert all(m is msgs[0] for m in msgs)
    encoded = {id(b.encode(m, True, frame)) for m in msgs if m is not None}
    assert len(encoded) == 1  # one JSON encoding and one compression for all 49


def test_removed_node_closes_its_session_and_others_see_peers_removed() -> None:
    src, b, sessions = setup(3)
    del src.nodes[3]
    b.handle(NodeRemoved(NodeID(3)))
    assert sessions[2].closed
    msg = b.build(sessions[0], NOW)
    assert msg is not None
    assert msg["PeersRemoved"] == [3]


def test_added_then_removed_before_flush() -> None:
    src, b, sessions = setup(2)
    src.nodes[5] = node(5)
    b.handle(NodeAdded(NodeID(5)))
    del src.nodes[5]
    b.handle(NodeRemoved(NodeID(5)))
    msg = b.build(sessions[0], NOW)
    assert msg == {"PeersRemoved": [5]}


def test_full_resync_with_zero_peers_says_peers_removed() -> None:
    src, b, sessions = setup(3)
    del src.nodes[2], src.nodes[3]
    b.handle(NodeRemoved(NodeID(2)))
    b.handle(NodeRemoved(NodeID(3)))
    b.handle(DNSChanged())  # coalesced: the next message is a full map with no peers
    msg = b.build(sessions[0], NOW)
    assert msg is not None
    assert "Peers" not in msg
    # Peers:[] could not say this (docs/protocol/control.md §4.3)
    assert msg["PeersRemoved"] == [2, 3]


def test_user_changed_sends_profiles() -> None:
    _, b, sessions = setup(2)
    b.handle(UserChanged(UserID(1)))
    msg = b.build(sessions[0], NOW)
    assert msg is not None
    assert msg["UserProfiles"][0]["ID"] == 1


def test_session_bookkeeping() -> None:
    _, b, sessions = setup(2)
    extra = MapSession(NodeID(1))
    b.add(extra)
    assert b.session_count(1) == 2
    assert b.session_count() == 3
    b.remove(extra)
    b.remove(sessions[0])
    assert b.session_count(1) == 0


def test_mapper_config_reaches_messages() -> None:
    src, _, _ = setup(1)
    cfg2 = replace(CFG, domain="other.example")
    b2 = Batcher(src, lambda: cfg2)  # type: ignore[arg-type]
    s = MapSession(NodeID(1))
    b2.add(s)
    msg = b2.build(s, NOW)
    assert msg is not None
    assert msg["Domain"] == "other.example"
    assert isinstance(mapper.encode(msg), bytes)


def test_home_derp_move_is_a_patch_and_unchanged_hostinfo_is_nothing() -> None:
    src, b, sessions = setup(2)
    src.nodes[2] = replace(src.nodes[2], hostinfo={"NetInfo": {"PreferredDERP": 901}})
    b.handle(NodeChanged(NodeID(2), frozenset({"hostinfo"})))  # first time: full node
    msg = b.build(sessions[0], NOW)
    assert msg is not None
    assert msg["PeersChanged"][0]["HomeDERP"] == 901
    src.nodes[2] = replace(src.nodes[2], hostinfo={"NetInfo": {"PreferredDERP": 902}})
    b.handle(NodeChanged(NodeID(2), frozenset({"hostinfo"})))
    msg = b.build(sessions[0], NOW)
    assert msg == {"PeersChangedPatch": [{"NodeID": 2, "DERPRegion": 902}]}
    me = b.build(sessions[1], NOW)
    assert me is not None
    assert me["Node"]["HomeDERP"] == 902
    # An equal Hostinfo (a new object) produces no message at all.
    src.nodes[2] = replace(src.nodes[2], hostinfo={"NetInfo": {"PreferredDERP": 902}})
    b.handle(NodeChanged(NodeID(2), frozenset({"hostinfo"})))
    assert b.build(sessions[0], NOW) is None


def test_policy_change_for_some_nodes_gives_only_them_full_maps() -> None:
    _, b, sessions = setup(3)
    b.handle(PolicyChanged(frozenset({NodeID(2)})))
    assert [s.pending.full for s in sessions] == [False, True, False]
    full = b.build(sessions[1], NOW)
    assert full is not None and "PacketFilters" in full and "Peers" in full
    assert b.build(sessions[0], NOW) is None and b.build(sessions[2], NOW) is None
    b.handle(PolicyChanged())  # a new policy text: everyone
    for s in sessions:
        msg = b.build(s, NOW)
        assert msg is not None and "PacketFilters" in msg
