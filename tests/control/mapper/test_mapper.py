"""mapper: MapResponse JSON as a pure function of nodes, users and config."""

from __future__ import annotations

import ipaddress
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from meshscale.control.mapper import mapper
from meshscale.control.models import Node, NodeID, User, UserID
from meshscale.key import DiscoPublic, MachinePublic, NodePublic
from meshscale.policy import AllowAll
from meshscale.tailcfg import DERPMap, DERPNode, DERPRegion, MapResponse, from_json

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
DERP = DERPMap(Regions={900: DERPRegion(900, "x", "X", Nodes=[DERPNode("900a", 900, "d")])})
CFG = mapper.MapConfig(base_domain="ts.example", domain="control.example", derp_map=DERP)
USERS = {UserID(1): User(UserID(1), "alice", email="alice@example.org")}


def node(i: int, **kw: object) -> Node:
    base = Node(
        id=NodeID(i),
        machine_key=MachinePublic(bytes([i]) * 32),
        node_key=NodePublic(bytes([i + 100]) * 32),
        user_id=UserID(1),
        hostname=f"h{i}",
        given_name=f"h{i}",
        ipv4=ipaddress.IPv4Address(f"100.64.0.{i}"),
        ipv6=ipaddress.IPv6Address(f"fd7a:115c:a1e0::{i}"),
        disco_key=DiscoPublic(bytes([i + 50]) * 32),
        hostinfo={"Hostname": f"h{i}", "NetInfo": {"PreferredDERP": 900}, "Future": [1]},
        endpoints=("192.0.2.1:41641",),
        created_at=NOW,
    )
    return replace(base, **kw)  # type: ignore[arg-type]


ALLOW_ALL = AllowAll().filter_for(node(1))  # what a server without a policy sends


def test_tail_node_fields() -> None:
    n = mapper.tail_node(node(3, online=True), CFG, NOW, is_self=True)
    assert n.Name == "h3.ts.example."
    assert n.Addresses == ["100.64.0.3/32", "fd7a:115c:a1e0::3/128"]
    assert n.AllowedIPs == n.Addresses
    assert n.HomeDERP == 900
    assert n.MachineAuthorized
    assert n.Online is True
    assert n.LastSeen is None
    assert n.Hostinfo["Future"] == [1]  # raw Hostinfo passes through


def test_offline_peer_has_last_seen_and_expired_self_is_unauthorized() -> None:
    seen = NOW - timedelta(minutes=5)
    peer = mapper.tail_node(node(4, online=False, last_seen=seen), CFG, NOW)
    assert peer.LastSeen == seen
    assert peer.Online is False
    me = mapper.tail_node(node(5, expiry=NOW - timedelta(seconds=1)), CFG, NOW, is_self=True)
    assert not me.MachineAuthorized
    assert me.Expired


def test_primary_routes_join_allowed_ips() -> None:
    r = ipaddress.ip_network("10.1.0.0/24")
    n = node(6, hostinfo={"RoutableIPs": ["10.1.0.0/24", "10.2.0.0/24"]}, approved_routes=(r,),
             primary=(r,))  # fmt: skip
    t = mapper.tail_node(n, CFG, NOW)
    assert t.PrimaryRoutes == ["10.1.0.0/24"]
    assert t.AllowedIPs[-1] == "10.1.0.0/24"
    # An HA secondary (approved, not elected) carries no route (docs/protocol/policy.md §5.3).
    t = mapper.tail_node(replace(n, primary=()), CFG, NOW)
    assert t.PrimaryRoutes == [] and "10.1.0.0/24" not in t.AllowedIPs


def test_exit_routes_in_allowed_ips_never_in_primary_routes() -> None:
    both = (ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0"))
    n = node(7, hostinfo={"RoutableIPs": ["0.0.0.0/0", "::/0"]}, approved_routes=both[:1])
    t = mapper.tail_node(n, CFG, NOW)
    assert t.PrimaryRoutes == [] and t.AllowedIPs[-2:] == ["0.0.0.0/0", "::/0"]


def test_full_map_shape() -> None:
    peers = [node(9), node(2), node(5)]
    msg = mapper.full_map(node(1), peers, USERS, CFG, NOW, packet_filter=ALLOW_ALL)
    assert [p["ID"] for p in msg["Peers"]] == [2, 5, 9]  # sorted by ID
    assert msg["Node"]["ID"] == 1
    assert msg["Domain"] == "control.example"
    assert msg["CollectServices"] is False
    assert msg["PacketFilters"] == {
        "base": [{"SrcIPs": ["*"], "DstPorts": [{"IP": "*", "Ports": {"First": 0, "Last": 65535}}]}]
    }
    assert msg["UserProfiles"] == [
        {"ID": 1, "LoginName": "alice@example.org", "DisplayName": "alice"}
    ]
    assert msg["Debug"] == {"DisableLogTail": True}
    decoded = from_json(MapResponse, msg)  # our own codec reads what we send
    assert decoded.Node is not None
    assert decoded.Node.Key == node(1).node_key


def test_full_map_without_peers_has_no_peers_key() -> None:
    assert "Peers" not in mapper.full_map(node(1), [], USERS, CFG, NOW, packet_filter=ALLOW_ALL)


def test_dns_config() -> None:
    cfg = mapper.build_dns_config(
        "ts.example",
        nameservers=["1.1.1.1"],
        prefixes=[
            ipaddress.ip_network("100.64.0.0/10"),
            ipaddress.ip_network("fd7a:115c:a1e0::/48"),
        ],
    )
    assert cfg.Routes["ts.example"] == []
    assert "64.100.in-addr.arpa" in cfg.Routes
    assert "127.100.in-addr.arpa" in cfg.Routes
    assert "0.e.1.a.c.5.1.1.a.7.d.f.ip6.arpa" in cfg.Routes
    assert cfg.Domains == ["ts.example"]
    assert [r.Addr for r in cfg.FallbackResolvers] == ["1.1.1.1"]
    assert cfg.Proxied
    over = mapper.build_dns_config("ts.example", nameservers=["1.1.1.1"], override_local_dns=True)
    assert [r.Addr for r in over.Resolvers] == ["1.1.1.1"]


def test_peer_patch() -> None:
    n = node(7, online=False, last_seen=NOW)
    pc = mapper.peer_patch(n, frozenset({"online", "endpoints"}))
    assert pc.Online is False
    assert pc.LastSeen == NOW
    assert pc.Endpoints == ["192.0.2.1:41641"]
    assert pc.DiscoKey is None


def test_delta_map() -> None:
    assert (
        mapper.delta_map(
            self_node=None, changed=[], patches=[], removed=[], users=USERS, cfg=CFG, now=NOW
        )
        is None
    )
    msg = mapper.delta_map(
        self_node=None, changed=[node(3)], patches=[(node(4), frozenset({"endpoints"}))],
        removed=[8, 8], users=USERS, cfg=CFG, now=NOW,
    )  # fmt: skip
    assert msg is not None
    assert [p["ID"] for p in msg["PeersChanged"]] == [3]
    assert msg["PeersChangedPatch"] == [{"NodeID": 4, "Endpoints": ["192.0.2.1:41641"]}]
    assert msg["PeersRemoved"] == [8]
    assert "Node" not in msg


def test_cache_is_keyed_by_snapshot_identity() -> None:
    cache = mapper.NodeJSONCache()
    n = node(3)
    a = cache.peer(n, CFG, NOW)
    assert cache.peer(n, CFG, NOW) is a
    n2 = replace(n, endpoints=("198.51.100.1:1",))
    b = cache.peer(n2, CFG, NOW)
    assert b is not a
    assert b["Endpoints"] == ["198.51.100.1:1"]
    # A cached peer whose key expires later is recomputed once it has expired.
    n3 = replace(n, expiry=NOW + timedelta(seconds=10))
    c = cache.peer(n3, CFG, NOW)
    assert "Expired" not in c
    assert cache.peer(n3, CFG, NOW + timedelta(seconds=11))["Expired"] is True


def test_spliced_encoding_equals_plain_json() -> None:
    import json

    cache = mapper.NodeJSONCache()
    msg = mapper.full_map(
        node(1), [node(2), node(3)], USERS, CFG, NOW, cache, packet_filter=ALLOW_ALL
    )
    plain = json.loads(mapper.encode(msg))
    assert json.loads(mapper.encode(msg, cache)) == plain
    assert json.loads(mapper.encode(msg, cache)) == plain  # from cached bytes
    delta = {"PeersChanged": [cache.peer(node(2), CFG, NOW)]}
    assert json.loads(mapper.encode(delta, cache)) == delta
    assert mapper.encode({"KeepAlive": True}, cache) == b'{"KeepAlive":true}'


def test_online_flips_use_online_change() -> None:
    msg = mapper.delta_map(
        self_node=None, changed=[], removed=[], users=USERS, cfg=CFG, now=NOW,
        patches=[
            (node(4, online=False, last_seen=NOW), frozenset({"online", "last_seen"})),
            (node(5, online=True), frozenset({"online"})),
        ],
    )  # fmt: skip
    assert msg == {
        "OnlineChange": {"4": False, "5": True},
        "PeerSeenChange": {"4": True, "5": False},
    }


def test_legacy_derp_string_only_where_a_home_region_is_known() -> None:
    import json

    from meshscale.control.mapper.mapper import encode, with_legacy_derp

    assert with_legacy_derp({"ID": 1, "HomeDERP": 0}) == {"ID": 1, "HomeDERP": 0}
    assert with_legacy_derp({"ID": 1, "HomeDERP": 7})["DERP"] == "127.3.3.40:7"
    msg = {"Node": {"ID": 1, "HomeDERP": 7}, "PeersChanged": [{"ID": 2, "HomeDERP": 9}]}
    assert json.loads(encode(msg, legacy_derp=True))["PeersChanged"][0]["DERP"] == "127.3.3.40:9"
    assert "DERP" not in json.loads(encode(msg))["Node"]


def test_shared_in_peer_has_only_its_addresses_sharer_jail_and_both_profiles() -> None:
    """Node sharing (docs/protocol/policy.md §6, §7 item 15): a shared-in router and exit
    node carries its own addresses only, Sharer, IsJailed, its own tailnet's FQDN; the
    sharer's profile travels even though no peer is owned by it."""
    both = (ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0"))
    sub = ipaddress.ip_network("10.1.0.0/24")
    s = node(8, user_id=UserID(7), hostinfo={"Hostname": "h8",
             "RoutableIPs": ["10.1.0.0/24", "0.0.0.0/0", "::/0"]},
             approved_routes=(sub, *both), primary=(sub,))  # fmt: skip
    view = mapper.ShareView("h8.other.example.", sharer=9)
    users = {**USERS, UserID(7): User(UserID(7), "owner"), UserID(9): User(UserID(9), "sharer")}
    msg = mapper.full_map(node(1), [s, node(2)], users, CFG, NOW, packet_filter=ALLOW_ALL,
                          share_for=lambda p: view if p.id == 8 else None)  # fmt: skip
    peer = next(p for p in msg["Peers"] if p["ID"] == 8)
    assert peer["AllowedIPs"] == peer["Addresses"] == ["100.64.0.8/32", "fd7a:115c:a1e0::8/128"]
    assert not peer.get("PrimaryRoutes")
    # not even the prefixes it advertises: the sharer's networks are not the recipient's
    # business (ts#10642); the rest of its Hostinfo travels
    assert peer["Hostinfo"] == {"Hostname": "h8"} and s.hostinfo["RoutableIPs"]
    assert (peer["Sharer"], peer["IsJailed"], peer["Name"]) == (9, True, "h8.other.example.")
    other = next(p for p in msg["Peers"] if p["ID"] == 2)
    assert "Sharer" not in other and "IsJailed" not in other
    assert [u["ID"] for u in msg["UserProfiles"]] == [1, 7, 9]
    # the sharer's side: the recipient's device is a ShareeNode, also without routes
    t = mapper.tail_node(s, CFG, NOW, share=mapper.ShareView("", sharee=True))
    assert t.Hostinfo["ShareeNode"] is True and t.Name == "h8.ts.example."
    assert "RoutableIPs" not in t.Hostinfo
    assert t.AllowedIPs == t.Addresses and not t.IsJailed and t.Sharer == 0
    delta = mapper.delta_map(self_node=None, changed=[s], patches=[], removed=[], users=users,
                             cfg=CFG, now=NOW, share_for=lambda p: view)  # fmt: skip
    assert delta is not None and delta["PeersChanged"][0]["IsJailed"] is True
    assert {u["ID"] for u in delta["UserProfiles"]} == {7, 9}
