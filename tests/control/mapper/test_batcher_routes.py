"""Route visibility per viewer (docs/protocol/policy.md §5.3, hs#2835): an exit node's /0s
and a router's subnet reach only the viewers the policy lets use them; a policy change flips
them in the affected viewers' maps. The batcher over State with the real PolicyEngine."""

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
EXITS = ["0.0.0.0/0", "::/0"]
LAN = "198.51.100.0/24"

# Everyone reaches the router's own IPs; only dev@ may use it as exit node / reach the LAN.
POLICY = """{
  "acls": [
    {"action": "accept", "src": ["*"], "dst": ["ops@:*"]},
    {"action": "accept", "src": ["dev@"], "dst": ["autogroup:internet:*", "198.51.100.0/24:*"]},
  ],
}"""


class World:
    def __init__(self, policy: str | None = POLICY) -> None:
        self.state = s = State.open(":memory:", clock=lambda: T0, policy=PolicyEngine())
        ops, dev, other = s.create_user("ops"), s.create_user("dev"), s.create_user("other")
        self.router = self._node(1, ops.id, "router", [LAN, *EXITS])
        s.approve_routes(self.router.id, [LAN, *EXITS])
        s.set_online(self.router.id, True)  # primary election needs it online
        self.dev1 = self._node(2, dev.id, "dev1")
        self.other1 = self._node(3, other.id, "other1")
        if policy is not None:
            s.set_policy(policy)
        self.sub: ChangeSubscription = s.subscribe()
        self.b = Batcher(SnapshotSource(s), lambda: CFG)
        self.sessions = {n: MapSession(getattr(self, n).id) for n in ("dev1", "other1")}
        for sess in self.sessions.values():
            self.b.add(sess)

    def _node(self, i: int, uid: Any, name: str, routes: list[str] | None = None) -> Node:
        hi: dict[str, Any] = {"Hostname": name}
        if routes:
            hi["RoutableIPs"] = routes
        return self.state.register_node(
            MachinePublic(bytes([i]) * 32), NodePublic(bytes([i]) * 32), uid, hi
        )

    def pump(self) -> dict[str, dict[str, Any] | None]:
        for ev in self.sub.drain():
            self.b.handle(ev)
        return {n: self.b.build(s, T0) for n, s in self.sessions.items()}

    def router_json(self, msg: dict[str, Any] | None) -> dict[str, Any]:
        assert msg is not None
        peers = msg.get("Peers") or msg.get("PeersChanged") or []
        (r,) = [p for p in peers if p["ID"] == self.router.id]
        return r


def routes(r: dict[str, Any]) -> tuple[list[str], list[str]]:
    extra = [p for p in r["AllowedIPs"] if p not in r["Addresses"]]
    return extra, list(r.get("PrimaryRoutes") or [])


def test_exit_and_subnet_routes_only_for_allowed_viewers() -> None:
    w = World()
    first = w.pump()
    assert routes(w.router_json(first["dev1"])) == ([LAN, *EXITS], [LAN])
    assert routes(w.router_json(first["other1"])) == ([], [])  # sees the router, not its routes


def test_no_policy_offers_every_route() -> None:
    w = World(policy=None)
    first = w.pump()
    for name in ("dev1", "other1"):
        assert routes(w.router_json(first[name])) == ([LAN, *EXITS], [LAN])


def test_policy_change_flips_the_exit_node_for_the_affected_viewer() -> None:
    w = World()
    w.pump()
    w.state.set_policy(POLICY.replace('["dev@"]', '["dev@", "other@"]'))
    msgs = w.pump()
    assert routes(w.router_json(msgs["other1"])) == ([LAN, *EXITS], [LAN])
    w.state.set_policy(POLICY)
    msgs = w.pump()
    assert routes(w.router_json(msgs["other1"])) == ([], [])


def test_a_router_change_is_not_shared_across_viewers() -> None:
    w = World()
    w.pump()
    w.state.update_hostinfo(w.router.id, {"Hostname": "router2", "RoutableIPs": [LAN, *EXITS]})
    msgs = w.pump()
    assert routes(w.router_json(msgs["dev1"])) == ([LAN, *EXITS], [LAN])
    assert routes(w.router_json(msgs["other1"])) == ([], [])
