from __future__ import annotations

from meshscale.key import DiscoPublic, NodePublic
from meshscale.node.controlclient import NetworkMap
from meshscale.tailcfg import (
    DERPMap,
    DERPNode,
    DERPRegion,
    FilterRule,
    MapResponse,
    Node,
    PeerChange,
    UserProfile,
)


def _node(i: int, **kw) -> Node:
    return Node(ID=i, Key=NodePublic(bytes([i]) * 32), Addresses=[f"100.64.0.{i}/32"], **kw)


def test_full_then_deltas():
    nm = NetworkMap()
    dm = DERPMap(Regions={900: DERPRegion(900, "lab", Nodes=[DERPNode("a", 900, "h")])})
    assert nm.apply(MapResponse(Node=_node(1), DERPMap=dm, Peers=[_node(2), _node(3)],
                                UserProfiles=[UserProfile(ID=1, LoginName="a")],
                                PacketFilters={"base": [FilterRule(SrcIPs=["*"])]}))  # fmt: skip
    assert set(nm.peers) == {2, 3} and nm.self_node.ID == 1 and 900 in nm.derp_map.Regions
    assert not nm.apply(MapResponse(KeepAlive=True))
    nm.apply(MapResponse(DERPMap=DERPMap()))  # empty regions: unchanged
    assert 900 in nm.derp_map.Regions
    nm.apply(MapResponse(PeersChanged=[_node(4)], PeersRemoved=[2]))
    assert set(nm.peers) == {3, 4}
    before = nm.peers[3]
    dk = DiscoPublic(b"\x09" * 32)
    nm.apply(MapResponse(PeersChangedPatch=[PeerChange(NodeID=3, DERPRegion=901,
                                                       Endpoints=["1.2.3.4:5"], DiscoKey=dk,
                                                       Online=True)]))  # fmt: skip
    p3 = nm.peers[3]
    assert (p3.HomeDERP, p3.Endpoints, p3.DiscoKey, p3.Online) == (901, ["1.2.3.4:5"], dk, True)
    assert before.HomeDERP == 0, "patches must not mutate nodes handed out earlier"
    nm.apply(MapResponse(OnlineChange={3: False}, PeersChangedPatch=[PeerChange(NodeID=77)]))
    assert nm.peers[3].Online is False
    nm.apply(MapResponse(Peers=[_node(5)]))
    assert set(nm.peers) == {5}
    assert nm.peer_by_ip("100.64.0.5").ID == 5 and nm.peer_by_ip("100.64.0.9") is None


def test_packet_filters_named_and_cleared():
    nm = NetworkMap()
    r1, r2 = FilterRule(SrcIPs=["1"]), FilterRule(SrcIPs=["2"])
    nm.apply(MapResponse(PacketFilters={"z": [r1], "a": [r2]}))
    assert nm.filter_rules() == [r2, r1]
    nm.apply(MapResponse(PacketFilters={"z": None}))
    assert nm.filter_rules() == [r2]
    nm.apply(MapResponse(PacketFilters={"*": None, "b": [r1]}))
    assert nm.filter_rules() == [r1]
    nm.apply(MapResponse(PacketFilters={"base": []}))
    assert nm.packet_filters["base"] == []
