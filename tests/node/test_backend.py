"""Backend: netmap -> WireGuard peer changes as a diff, status, whois (fake engine and router)."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import pytest

from meshscale.key import DiscoPrivate, NodePrivate
from meshscale.node.backend import Backend
from meshscale.node.controlclient import NetworkMap
from meshscale.node.store import State, StateStore
from meshscale.tailcfg import (
    DERPMap,
    DERPNode,
    DERPRegion,
    FilterRule,
    MapResponse,
    NetPortRange,
    Node,
    PeerChange,
    PortRange,
    UserProfile,
)
from meshscale.wgengine.magicbind import MagicBind, peer_endpoint
from meshscale.wgengine.router import Config
from meshscale.wireguard.uapi import SetRequest


class FakeDevice:
    def __init__(self) -> None:
        self.peers: dict[bytes, Any] = {}
        self.keypairs: dict[int, Any] = {}
        self.handshakes: dict[int, Any] = {}
        self.drops: dict[str, int] = {}


class FakePeer:
    def __init__(self, change: Any) -> None:
        self.change = change
        self.endpoint = change.endpoint
        self.allowed_ips_add = change.allowed_ips_add
        self.rx_bytes = self.tx_bytes = self.last_handshake_ns = 0


class FakeEngine:
    def __init__(self) -> None:
        self.device = FakeDevice()
        self.errors: dict[str, int] = {}
        self.filter_in: Any = None
        self.filter_out: Any = None
        self.sets: list[SetRequest] = []

    def uapi_set(self, req: SetRequest) -> None:
        self.sets.append(req)
        for ch in req.peers:
            if ch.remove:
                self.device.peers.pop(ch.public_key, None)
            else:
                self.device.peers[ch.public_key] = FakePeer(ch)


class FakeRouter:
    ifname = "ms0"

    def __init__(self) -> None:
        self.addresses: list[list[str]] = []

    def set(self, config: Config) -> None:
        self.addresses.append([f"{a}/{a.max_prefixlen}" for a in config.local_addrs])


def _key(i: int) -> NodePrivate:
    return NodePrivate(bytes([i]) * 32)


def _disco(i: int) -> DiscoPrivate:
    return DiscoPrivate(bytes([100 + i]) * 32)


def _node(i: int, *, key: int | None = None, disco: int | None = None, **kw: Any) -> Node:
    return Node(
        ID=i, StableID=f"n{i}", Name=f"h{i}.ms.lab.", User=1, Key=_key(key or i).public(),
        DiscoKey=_disco(disco or i).public(), Addresses=[f"100.64.0.{i}/32"],
        AllowedIPs=[f"100.64.0.{i}/32"], Hostinfo={"Hostname": f"h{i}", "OS": "linux"},
        MachineAuthorized=True, HomeDERP=900, **kw,
    )  # fmt: skip


def _backend(tmp_path) -> tuple[Backend, FakeEngine, FakeRouter]:
    st = State.new(os.urandom)
    bind = MagicBind(st.node_key, st.disco_key, on_event=lambda ev: None)
    engine, router = FakeEngine(), FakeRouter()
    be = Backend(StateStore(tmp_path / "state"), st, engine=engine, bind=bind, router=router)
    return be, engine, router


def _changes(engine: FakeEngine) -> list[tuple[bytes, bool]]:
    out = [(c.public_key, c.remove) for r in engine.sets for c in r.peers]
    engine.sets.clear()
    return out


DM = DERPMap(Regions={900: DERPRegion(900, "lab", Nodes=[DERPNode("a", 900, "d", IPv4="1.2.3.4")])})


def test_peer_changes_are_a_diff(tmp_path):
    be, engine, router = _backend(tmp_path)
    nm = NetworkMap()
    nm.apply(MapResponse(Node=_node(1), DERPMap=DM, Peers=[_node(2), _node(3)],
                         UserProfiles=[UserProfile(ID=1, LoginName="lab@x")],
                         PacketFilters={"base": [FilterRule(SrcIPs=["*"])]}))  # fmt: skip
    be._on_netmap(nm)
    assert router.addresses == [["100.64.0.1/32"]]
    assert sorted(_changes(engine)) == sorted([(_key(2).public().raw, False),
                                               (_key(3).public().raw, False)])  # fmt: skip
    added = engine.device.peers[_key(2).public().raw]
    assert added.endpoint == peer_endpoint(_key(2).public())
    assert [str(n) for n in added.allowed_ips_add] == ["100.64.0.2/32"]
    assert be.status().BackendState == "Running"

    # Endpoints of peer 3 move: nothing to tell WireGuard (magicsock handles paths).
    nm.apply(MapResponse(PeersChangedPatch=[PeerChange(NodeID=3, Endpoints=["203.0.113.9:1"])]))
    be._on_netmap(nm)
    assert _changes(engine) == []

    # Peer 3 restarted (new disco key): only its session is reset.
    nm.apply(MapResponse(PeersChangedPatch=[PeerChange(NodeID=3, DiscoKey=_disco(33).public())]))
    be._on_netmap(nm)
    assert _changes(engine) == [(_key(3).public().raw, True), (_key(3).public().raw, False)]

    # Peer 2 got a new node key: the old one goes, the new one comes; peer 3 is untouched.
    nm.apply(MapResponse(PeersChanged=[_node(2, key=22)]))
    be._on_netmap(nm)
    assert sorted(_changes(engine)) == sorted([(_key(2).public().raw, True),
                                               (_key(22).public().raw, False)])  # fmt: skip

    nm.apply(MapResponse(PeersRemoved=[3]))
    be._on_netmap(nm)
    assert _changes(engine) == [(_key(3).public().raw, True)]
    assert set(engine.device.peers) == {_key(22).public().raw}


def test_status_and_whois(tmp_path):
    be, _engine, _router = _backend(tmp_path)
    nm = NetworkMap()
    nm.apply(MapResponse(Node=_node(1), DERPMap=DM, Peers=[_node(2, Online=False)],
                         UserProfiles=[UserProfile(ID=1, LoginName="lab@x")],
                         Domain="ms.lab"))  # fmt: skip
    be._on_netmap(nm)
    st = be.status().to_json()
    assert st["TailscaleIPs"] == ["100.64.0.1"] and st["Self"]["HostName"] == "h1"
    peer = st["Peer"][_key(2).public().text()]
    assert (peer["HostName"], peer["DNSName"], peer["Online"], peer["Relay"]) == (
        "h2", "h2.ms.lab.", False, "lab")  # fmt: skip
    assert peer["CurAddr"] == "" and peer["InEngine"] and peer["InMagicSock"]
    assert be.whois("100.64.0.2")["Node"]["Name"] == "h2.ms.lab."
    assert be.whois("100.64.0.1")["UserProfile"]["LoginName"] == "lab@x"
    assert be.whois("100.64.0.9") is None


def test_ping_unknown_ip_is_404(tmp_path):
    from meshscale.node.localapi import BackendError

    be, _engine, _router = _backend(tmp_path)
    with pytest.raises(BackendError) as info:
        asyncio.run(be.ping("100.64.0.9", 1.0))
    assert info.value.status == 404


def test_a_jailed_peer_cannot_open_flows_whatever_the_filter_says(tmp_path):
    """TS-2024-005 in our node: a peer shared in from another tailnet comes with IsJailed;
    meshscaled's packet filter drops every flow it opens, even under an allow-all filter,
    and still lets it answer ours; a patch keeps the jail, a share that ends lifts it."""
    from tests.packet.builders import ip_packet

    be, _, _ = _backend(tmp_path)
    nm = NetworkMap()
    nm.apply(MapResponse(Node=_node(1), DERPMap=DM, Peers=[_node(2), _node(3, IsJailed=True,
                                                                           Sharer=7)],
                         UserProfiles=[UserProfile(ID=1, LoginName="lab@x")],
                         PacketFilters={"base": [FilterRule(SrcIPs=["*"], DstPorts=[
                             NetPortRange(IP="*", Ports=PortRange(0, 65535))])]}))  # fmt: skip
    be._on_netmap(nm)
    syn2, syn3 = (ip_packet(f"100.64.0.{i}", "100.64.0.1", 6, dport=8080) for i in (2, 3))
    reply3 = ip_packet("100.64.0.3", "100.64.0.1", 6, sport=8080, dport=40000, flags=0x12)
    udp3 = ip_packet("100.64.0.3", "100.64.0.1", 17, sport=53, dport=40000)
    assert be._filter_in([syn2, syn3, reply3]) == [syn2, reply3]
    assert be._filter_in([udp3]) == []
    be._filter_out([ip_packet("100.64.0.1", "100.64.0.3", 17, sport=40000, dport=53)])
    assert be._filter_in([udp3]) == [udp3]  # the answer to our own query

    nm.apply(MapResponse(PeersChangedPatch=[PeerChange(NodeID=3, Endpoints=["203.0.113.9:1"])]))
    be._on_netmap(nm)
    assert be._filter_in([syn3]) == []
    nm.apply(MapResponse(PeersChanged=[_node(3)]))  # no longer jailed
    be._on_netmap(nm)
    assert be._filter_in([syn3]) == [syn3]
