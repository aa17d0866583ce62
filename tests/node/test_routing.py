"""node.routing: which prefixes WireGuard and the OS carry, from prefs and the netmap."""

from __future__ import annotations

import ipaddress

import pytest

from meshscale.node.controlclient import NetworkMap
from meshscale.node.prefs import Prefs
from meshscale.node.routing import (
    RoutingError,
    check_prefs,
    peer_allowed_ips,
    resolve_exit_node,
    router_config,
)
from meshscale.tailcfg import Node

SELF = Node(ID=1, StableID="n1", Addresses=["100.64.0.1/32"])
EXIT = Node(ID=2, StableID="n2", Addresses=["100.64.0.2/32", "fd7a:115c:a1e0::2/128"],
            AllowedIPs=["100.64.0.2/32", "fd7a:115c:a1e0::2/128", "0.0.0.0/0", "::/0"])  # fmt: skip
ROUTER = Node(ID=3, StableID="n3", Addresses=["100.64.0.3/32"],
              AllowedIPs=["100.64.0.3/32", "198.51.100.0/24", "10.9.9.9/24"])  # fmt: skip


def nm() -> NetworkMap:
    return NetworkMap(self_node=SELF, peers={2: EXIT, 3: ROUTER})


def test_routes_need_accept_routes_and_exit_routes_need_the_choice() -> None:
    assert peer_allowed_ips(ROUTER, Prefs(), "") == ("100.64.0.3/32",)
    # host bits set: skipped, as tailscale does
    assert peer_allowed_ips(ROUTER, Prefs(RouteAll=True), "") == ("100.64.0.3/32",
                                                                  "198.51.100.0/24")  # fmt: skip
    assert "0.0.0.0/0" not in peer_allowed_ips(EXIT, Prefs(RouteAll=True), "")
    assert {"0.0.0.0/0", "::/0"} <= set(peer_allowed_ips(EXIT, Prefs(), "n2"))


def test_router_config_uses_table_routes_and_serves_what_we_advertise() -> None:
    prefs = Prefs(ExitNodeIP="100.64.0.2", ExitNodeAllowLANAccess=True, RouteAll=True)
    cfg = router_config(prefs, nm(), resolve_exit_node(prefs, nm()))
    routes = {str(r) for r in cfg.routes}
    assert {"0.0.0.0/0", "::/0", "198.51.100.0/24", "100.64.0.0/10"} <= routes
    assert cfg.exit_lan_access and not cfg.subnet_routes
    cleared = router_config(Prefs(), nm(), "")
    assert {str(r) for r in cleared.routes} == {"100.64.0.0/10", "fd7a:115c:a1e0::/48"}
    served = router_config(Prefs(AdvertiseRoutes=["192.0.2.0/24"], NoSNAT=True), nm(), "")
    assert served.subnet_routes == (ipaddress.ip_network("192.0.2.0/24"),) and not served.snat
    # chosen but gone from the netmap: the /0s stay (blackhole), traffic never leaks
    gone = NetworkMap(self_node=SELF, peers={})
    assert ipaddress.ip_network("0.0.0.0/0") in router_config(prefs, gone, "").routes


@pytest.mark.parametrize(("prefs", "needle"), [
    (Prefs(ExitNodeIP="100.64.0.3"), "does not offer an exit node"),
    (Prefs(ExitNodeIP="100.64.0.77"), "no node with IP 100.64.0.77"),
    (Prefs(ExitNodeIP="100.64.0.1"), "its own exit node"),
    (Prefs(ExitNodeIP="100.64.0.2", AdvertiseRoutes=["0.0.0.0/0", "::/0"]), "at the same time"),
    (Prefs(AdvertiseRoutes=["10.0.0.0/8", "10.2.0.0/16"]), "overlap"),
])  # fmt: skip
def test_bad_prefs_refused(prefs: Prefs, needle: str) -> None:
    with pytest.raises(RoutingError, match=needle):
        check_prefs(prefs, nm())


def test_jailed_nets_are_a_shared_in_peers_prefixes_without_default_routes() -> None:
    from meshscale.node.routing import jailed_nets

    shared = Node(ID=4, Addresses=["100.64.0.4/32"], IsJailed=True,
                  AllowedIPs=["100.64.0.4/32", "0.0.0.0/0", "::/0"])  # fmt: skip
    assert jailed_nets([EXIT, ROUTER, shared]) == (ipaddress.ip_network("100.64.0.4/32"),)
