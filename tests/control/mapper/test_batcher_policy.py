"""The batcher over State with the real PolicyEngine: each node's map holds only the peers
the policy lets it see, and a policy or tag change reaches only the affected nodes."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from meshscale.control.mapper import mapper
from meshscale.control.mapper.batcher import Batcher, MapSession, SnapshotSource
from meshscale.control.models import ChangeSubscription, Node
from meshscale.control.state import State
from meshscale.key import MachinePublic, NodePublic
from meshscale.policy import PolicyEngine
from meshscale.testing.mapsource import DERP

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
CFG = mapper.MapConfig(base_domain="ts.example", domain="control.example", derp_map=DERP)

POLICY = """{
  "groups": {"group:dev": ["dev@"]},
  "tagOwners": {"tag:db": ["dev@"]},
  "acls": [{"action": "accept", "src": ["group:dev"], "dst": ["tag:db:5432"]}],
}"""


class World:
    def __init__(self) -> None:
        self.state = s = State.open(":memory:", clock=lambda: T0, policy=PolicyEngine())
        dev, other = s.create_user("dev"), s.create_user("other")
        self.db = self._node(1, dev.id, "db")
        self.db = s.set_tags(self.db.id, ["tag:db"])
        self.dev1 = self._node(2, dev.id, "dev1")
        self.other1 = self._node(3, other.id, "other1")
        s.set_policy(POLICY)
        self.sub: ChangeSubscription = s.subscribe()
        self.b = Batcher(SnapshotSource(s), lambda: CFG)
        self.sessions: dict[str, MapSession] = {}
        for name in ("db", "dev1", "other1"):
            node: Node = getattr(self, name)
            sess = self.sessions[name] = MapSession(node.id)
            self.b.add(sess)

    def _node(self, i: int, uid: Any, name: str) -> Node:
        return self.state.register_node(
            MachinePublic(bytes([i]) * 32), NodePublic(bytes([i]) * 32), uid, {"Hostname": name}
        )

    def pump(self) -> dict[str, dict[str, Any] | None]:
        for ev in self.sub.drain():
            self.b.handle(ev)
        return {n: self.b.build(s, T0) for n, s in self.sessions.items()}


def peer_ids(msg: dict[str, Any] | None) -> list[int]:
    assert msg is not None
    return [p["ID"] for p in msg.get("Peers", [])]


def test_peers_and_filters_follow_the_policy() -> None:
    w = World()
    first = w.pump()
    assert peer_ids(first["db"]) == [w.dev1.id]
    assert peer_ids(first["dev1"]) == [w.db.id]
    assert peer_ids(first["other1"]) == []
    db_filter = first["db"]["PacketFilters"]["base"]  # type: ignore[index]
    assert db_filter[0]["DstPorts"][0]["Ports"] == {"First": 5432, "Last": 5432}
    assert first["dev1"]["PacketFilters"]["base"] == []  # type: ignore[index]

    # An endpoint change of db: dev1 gets the patch, other1 learns nothing of db.
    w.state.update_endpoints(w.db.id, ["192.0.2.1:41641"])
    msgs = w.pump()
    assert msgs["other1"] is None
    assert msgs["dev1"] is not None and "PeersChangedPatch" in msgs["dev1"]

    # A non-patchable change of db (hostinfo): hidden from other1 (a removal, not a leak).
    w.state.update_hostinfo(w.db.id, {"Hostname": "db", "OS": "linux"})
    msgs = w.pump()
    assert msgs["dev1"] is not None and [p["ID"] for p in msgs["dev1"]["PeersChanged"]] == [w.db.id]
    other = msgs["other1"]
    assert other is None or ("PeersChanged" not in other and other.get("PeersRemoved") == [w.db.id])


def test_policy_change_reaches_only_affected_nodes() -> None:
    w = World()
    w.pump()
    w.state.set_policy(POLICY.replace('["dev@"]}', '["dev@", "other@"]}', 1))
    msgs = w.pump()
    # other1 now reaches db: both get full maps; dev1's answers did not move.
    assert msgs["dev1"] is None
    assert peer_ids(msgs["other1"]) == [w.db.id]
    assert sorted(peer_ids(msgs["db"])) == [w.dev1.id, w.other1.id]
    # Back: other1's full map has no peers, so it must name db as removed.
    w.state.set_policy(POLICY)
    msgs = w.pump()
    other = msgs["other1"]
    assert other is not None and other.get("Peers", []) == [] and w.db.id in other["PeersRemoved"]


def test_tag_change_updates_the_tagged_node_and_its_viewers() -> None:
    w = World()
    w.pump()
    w.state.set_tags(w.db.id, [])  # db becomes dev's plain device: no rule reaches it
    msgs = w.pump()
    assert msgs["db"] is not None and peer_ids(msgs["db"]) == []
    dev1 = msgs["dev1"]
    assert dev1 is not None and w.db.id in dev1.get("PeersRemoved", [])
    assert msgs["other1"] is None or "PeersChanged" not in msgs["other1"]  # type: ignore[operator]


def test_node_attrs_reach_the_self_cap_map_and_follow_policy_changes() -> None:
    w = World()
    w.pump()
    attrs = POLICY.replace(
        '"acls"', '"nodeAttrs": [{"target": ["tag:db"], "attr": ["funnel", "x-test"]}],\n  "acls"'
    )
    w.state.set_policy(attrs)
    msgs = w.pump()
    db = msgs["db"]
    assert db is not None and db["Node"]["CapMap"]["x-test"] is None
    assert "https://tailscale.com/cap/is-admin" in db["Node"]["CapMap"]
    assert msgs["dev1"] is None and msgs["other1"] is None  # their CapMaps did not move
    # A self update (hostinfo) keeps the attributes.
    w.state.update_hostinfo(w.db.id, {"Hostname": "db", "OS": "linux"})
    db = w.pump()["db"]
    assert db is not None and "x-test" in db["Node"]["CapMap"]
    w.state.set_policy(POLICY)
    db = w.pump()["db"]
    assert db is not None and "x-test" not in db["Node"]["CapMap"]
