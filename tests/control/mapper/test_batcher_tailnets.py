"""The batcher over State with two tailnets (issue #16 part 1): a node's map only ever
holds its own tailnet's nodes (and their users' profiles), with or without a policy; a new
node, a change and a removal in one tailnet reach only that tailnet's sessions."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from meshscale.control.mapper import mapper
from meshscale.control.mapper.batcher import Batcher, MapSession, SnapshotSource
from meshscale.control.models import ChangeSubscription, DNSChanged, Node, UserID
from meshscale.control.state import State
from meshscale.key import MachinePublic, NodePublic
from meshscale.policy import PolicyEngine
from meshscale.testing.mapsource import DERP

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
CFG = mapper.MapConfig(base_domain="ts.example", domain="control.example", derp_map=DERP)


class World:
    def __init__(self, engine: bool) -> None:
        self.state = s = State.open(":memory:", clock=lambda: T0,
                                    policy=PolicyEngine() if engine else None)  # fmt: skip
        acme = s.create_tailnet("acme").id
        self.alice, self.bob = s.create_user("alice"), s.create_user("bob", tailnet=acme)
        self.i = 0
        self.a1 = self.node(self.alice.id, "alicebox-one")
        self.a2 = self.node(self.alice.id, "alicebox-two")
        self.b1 = self.node(self.bob.id, "bobbox-one")
        self.sub: ChangeSubscription = s.subscribe()
        self.b = Batcher(SnapshotSource(s), lambda: CFG)
        self.sessions: dict[str, MapSession] = {}
        for name in ("a1", "a2", "b1"):
            sess = self.sessions[name] = MapSession(getattr(self, name).id)
            self.b.add(sess)

    def node(self, uid: UserID, name: str) -> Node:
        self.i += 1
        return self.state.register_node(MachinePublic(bytes([self.i]) * 32),
                                        NodePublic(bytes([self.i]) * 32), uid,
                                        {"Hostname": name})  # fmt: skip

    def pump(self) -> dict[str, dict[str, Any] | None]:
        for ev in self.sub.drain():
            self.b.handle(ev)
        return {n: self.b.build(s, T0) for n, s in self.sessions.items()}


def ids(msg: dict[str, Any] | None, key: str = "Peers") -> list[int]:
    return [p["ID"] for p in (msg or {}).get(key) or []]


@pytest.mark.parametrize("engine", [False, True])
def test_maps_hold_only_the_own_tailnet(engine: bool) -> None:
    w = World(engine)
    first = w.pump()
    assert ids(first["a1"]) == [w.a2.id] and ids(first["a2"]) == [w.a1.id]
    assert ids(first["b1"]) == []
    profiles = {p["ID"] for p in first["a1"]["UserProfiles"]}  # type: ignore[index]
    assert w.bob.id not in profiles
    assert "bobbox" not in json.dumps(first["a1"]) and "alicebox" not in json.dumps(first["b1"])
    # a new node of acme: b1 learns it, alice's nodes never do
    b2 = w.node(w.bob.id, "bobbox-two")
    msgs = w.pump()
    assert ids(msgs["b1"], "PeersChanged") == [b2.id]
    for a in ("a1", "a2"):
        assert msgs[a] is None or b2.id not in ids(msgs[a], "PeersChanged"), msgs[a]
    # a change of b1 goes to nobody of default
    w.state.update_endpoints(w.b1.id, ["192.0.2.1:41641"])
    w.state.update_hostinfo(w.b1.id, {"Hostname": "bobbox-one", "OS": "linux"})
    msgs = w.pump()
    for a in ("a1", "a2"):
        assert msgs[a] is None or "bobbox" not in json.dumps(msgs[a]), msgs[a]
    # removing a node of default: only default's sessions hear of it
    w.state.delete_node(w.a2.id)
    msgs = w.pump()
    assert msgs["a1"] is not None
    assert w.a2.id in (msgs["a1"].get("PeersRemoved") or [])
    # another tailnet's sessions do not even learn that the id existed
    assert msgs["b1"] is None, msgs["b1"]


def test_a_tailnet_with_its_own_base_domain_names_its_nodes_under_it() -> None:
    w = World(engine=True)
    dns = mapper.build_dns_config("ts.example", magic_dns=True)
    cfg = mapper.MapConfig(base_domain="ts.example", domain="control.example", derp_map=DERP,
                           dns_config=dns)  # fmt: skip
    w.b = Batcher(SnapshotSource(w.state), lambda: cfg)
    for name, sess in list(w.sessions.items()):
        w.sessions[name] = MapSession(sess.node_id)
        w.b.add(w.sessions[name])
    acme = w.state.get_tailnet_by_name("acme").id
    w.state.set_tailnet_base_domain(acme, "Acme.Example.")
    b2 = w.node(w.bob.id, "bobbox-two")
    first = w.pump()
    b1 = first["b1"]
    assert b1 is not None
    assert b1["Node"]["Name"] == "bobbox-one.acme.example."
    assert [p["Name"] for p in b1["Peers"]] == ["bobbox-two.acme.example."]
    assert b1["DNSConfig"]["Domains"][0] == "acme.example"
    assert (
        "acme.example" in b1["DNSConfig"]["Routes"]
        and "ts.example" not in b1["DNSConfig"]["Routes"]
    )
    a1 = first["a1"]
    assert a1 is not None and a1["Node"]["Name"] == "alicebox-one.ts.example."
    assert a1["DNSConfig"]["Domains"][0] == "ts.example"
    # a change of b2 reaches b1 under acme's domain, not under the server's
    w.state.update_hostinfo(b2.id, {"Hostname": "bobbox-two", "OS": "linux"})
    msgs = w.pump()
    assert [p["Name"] for p in msgs["b1"]["PeersChanged"]] == ["bobbox-two.acme.example."]  # type: ignore[index]
    # unset: the server's again, for every map
    w.state.set_tailnet_base_domain(acme, None)
    again = w.pump()["b1"]
    assert again is not None and again["Node"]["Name"] == "bobbox-one.ts.example."
    assert [p["Name"] for p in again["Peers"]] == ["bobbox-two.ts.example."]


def test_a_node_shared_in_from_a_tailnet_with_its_own_domain_is_routed_to_magicdns() -> None:
    """The recipient's DNS config also routes the sharer's base domain to quad-100, or the
    OS would never ask it for the shared node's name."""
    w = World(engine=False)
    dns = mapper.build_dns_config("ts.example", magic_dns=True)
    cfg = mapper.MapConfig(base_domain="ts.example", domain="control.example", derp_map=DERP,
                           dns_config=dns)  # fmt: skip
    w.b = Batcher(SnapshotSource(w.state), lambda: cfg)
    for name, sess in list(w.sessions.items()):
        w.sessions[name] = MapSession(sess.node_id)
        w.b.add(w.sessions[name])
    acme = w.state.get_tailnet_by_name("acme").id
    w.state.set_tailnet_base_domain(acme, "acme.example")
    before = w.pump()["a1"]
    assert before is not None and "acme.example" not in before["DNSConfig"]["Routes"]
    w.state.share_node(w.b1.id, w.alice.id)
    a1 = w.pump()["a1"]
    assert a1 is not None
    assert [p["Name"] for p in a1["Peers"] if p["ID"] == w.b1.id] == ["bobbox-one.acme.example."]
    assert set(a1["DNSConfig"]["Routes"]) >= {"ts.example", "acme.example"}
    assert a1["DNSConfig"]["Domains"][0] == "ts.example"
    w.state.unshare_node(w.b1.id, w.alice.id)
    after = w.pump()["a1"]
    assert after is not None and "acme.example" not in after["DNSConfig"]["Routes"]


def names(msg: dict[str, Any] | None, nid: int) -> bool:
    """Whether ``msg`` mentions node id ``nid`` anywhere a peer id travels."""
    if msg is None:
        return False
    keys = ("Peers", "PeersChanged", "PeersChangedPatch")
    listed = {p.get("ID", p.get("NodeID")) for k in keys for p in msg.get(k) or []}
    flags = {int(k) for k in ("OnlineChange", "PeerSeenChange") for k in msg.get(k) or {}}
    return nid in listed | flags | set(msg.get("PeersRemoved") or [])


def dropped(msg: dict[str, Any] | None, nid: int) -> bool:
    """Whether ``msg`` takes peer ``nid`` away (PeersRemoved, or a full map without it)."""
    if msg is None:
        return False
    taken = nid in (msg.get("PeersRemoved") or [])
    return taken or (bool(msg.get("Peers")) and nid not in ids(msg))


@pytest.mark.parametrize("engine", [False, True])
def test_a_removal_reaches_only_the_sessions_that_could_see_the_node(engine: bool) -> None:
    w = World(engine)
    w.pump()
    b2 = w.node(w.bob.id, "bobbox-two")
    w.pump()
    # a change of another tailnet's node is no removal for sessions that never saw it
    w.state.update_hostinfo(w.b1.id, {"Hostname": "bobbox-one", "OS": "linux"})
    w.state.update_endpoints(w.b1.id, ["192.0.2.1:41641"])
    msgs = w.pump()
    assert msgs["a1"] is None and msgs["a2"] is None, msgs
    w.state.delete_node(b2.id)
    msgs = w.pump()
    assert msgs["b1"] is not None and msgs["b1"].get("PeersRemoved") == [b2.id]
    assert msgs["a1"] is None and msgs["a2"] is None, msgs
    w.state.delete_node(w.a2.id)
    msgs = w.pump()
    assert msgs["a1"] is not None and msgs["a1"].get("PeersRemoved") == [w.a2.id]
    assert not names(msgs["b1"], w.a2.id), msgs["b1"]


def test_a_full_map_without_peers_removes_only_what_the_session_could_hold() -> None:
    w = World(engine=False)
    w.pump()
    gone = w.node(w.bob.id, "bobbox-two")
    w.pump()
    w.state.delete_node(gone.id)
    w.state.delete_node(w.a2.id)
    w.pump()
    w.b.handle(DNSChanged())  # every session gets a full map again; b1's has no peers
    msgs = w.pump()
    b1 = msgs["b1"]
    assert b1 is not None and "Peers" not in b1
    assert gone.id in b1.get("PeersRemoved", []), b1
    for other in (w.a1.id, w.a2.id):
        assert not names(b1, other), b1


@pytest.mark.parametrize("engine", [False, True])
def test_a_shared_node_removal_reaches_the_recipient_and_back(engine: bool) -> None:
    w = World(engine)
    w.state.share_node(w.b1.id, w.alice.id)
    first = w.pump()
    assert w.b1.id in ids(first["a1"])
    assert w.a1.id in ids(first["b1"]), first["b1"]
    # a recipient's device goes away: the shared node's session hears of it
    w.state.delete_node(w.a2.id)
    msgs = w.pump()
    assert dropped(msgs["b1"], w.a2.id), msgs
    # the shared node goes away: the recipient's sessions hear of it
    w.state.delete_node(w.b1.id)
    msgs = w.pump()
    assert dropped(msgs["a1"], w.b1.id), msgs  # (a2 is gone)


def test_the_fanout_tick_sends_a_removal_only_to_the_own_tailnet() -> None:
    """The direct path (one shared batch per tick, poll.py) filters the same way."""
    w = World(engine=False)
    w.b = Batcher(SnapshotSource(w.state), lambda: CFG)
    out: dict[str, list[dict[str, Any]]] = {}

    def writer(name: str) -> Callable[[bytes], bool]:
        out[name] = []
        return lambda data: out[name].append(json.loads(data)) is None

    async def run() -> None:
        w.b.enable_direct(lambda: T0, lambda data, _compress: data, lambda _l, _n, _c: 0.0)
        for name, sess in list(w.sessions.items()):
            w.sessions[name] = MapSession(sess.node_id, push=writer(name))
            w.b.add(w.sessions[name])
        for sess in w.sessions.values():
            assert w.b.build(sess, T0) is not None  # the poll task's first full map
            sess.idle = True
        w.state.delete_node(w.a2.id)
        for ev in w.sub.drain():
            w.b.handle(ev)
        for _ in range(3):
            await asyncio.sleep(0)

    asyncio.run(run())
    assert [m.get("PeersRemoved") for m in out["a1"]] == [[w.a2.id]], out
    assert out["b1"] == [], out


def test_a_user_change_reaches_only_the_sessions_that_may_show_the_user() -> None:
    w = World(engine=False)
    w.pump()
    w.state.rename_user(w.bob.id, "robert")
    msgs = w.pump()
    assert msgs["a1"] is None and msgs["a2"] is None, msgs
    assert [u["LoginName"] for u in msgs["b1"]["UserProfiles"]] == ["robert"]  # type: ignore[index]
    # a share brings the owner's profile in: its changes follow
    w.state.share_node(w.b1.id, w.alice.id)
    w.pump()
    w.state.rename_user(w.bob.id, "bobby")
    msgs = w.pump()
    assert [u["LoginName"] for u in msgs["a1"]["UserProfiles"]] == ["bobby"]  # type: ignore[index]
    w.state.rename_user(w.alice.id, "alicia")
    msgs = w.pump()
    assert msgs["a1"] is not None and msgs["b1"] is not None  # b1 shows a1 and a2 (sharees)
