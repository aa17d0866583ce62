"""Routes on the node: prefs + netmap -> what WireGuard, the OS and the filter carry. Pure.

Using routes (docs/protocol/policy.md §5.3-5.4, tailscale nmcfg.WGCfg and peerRoutes):

* a peer's WireGuard AllowedIPs keep its own tailnet addresses always, its other prefixes
  only with ``--accept-routes`` (RouteAll), and both /0s only for the chosen exit node;
  prefixes with host bits set are skipped;
* the OS routes (``router.Config.routes``, table 52) are the tailnet ranges plus every
  accepted peer prefix, plus both /0s while an exit node is chosen.

Being a router (§5.7): the prefixes we advertise are served (netfilter forward + SNAT) and
join the filter's local set, so the packet filter applies to forwarded traffic.

The exit node is chosen by IP (``ExitNodeIP``) and resolved to the peer's StableID; a node
cannot advertise an exit node and use one (tailscale checkExitNodePrefsLocked).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from meshscale.tailcfg import Node
from meshscale.wgengine.router import TAILNET_ROUTES, Config
from meshscale.wgengine.router.config import IPNetwork
from meshscale.wgengine.router.routes import (
    EXIT_ROUTES,
    RouteError,
    offers_exit,
    parse_route_list,
)

from .controlclient import NetworkMap
from .prefs import Prefs

_ULA = ipaddress.ip_network("fd7a:115c:a1e0::/48")
_CGNAT = ipaddress.ip_network("100.64.0.0/10")


__all__ = ["RoutingError", "check_prefs", "health", "jailed_nets", "offers_exit",
           "peer_allowed_ips", "resolve_exit_node", "router_config"]  # fmt: skip


class RoutingError(ValueError):
    """Prefs that cannot be applied; the message is for the user."""


def check_prefs(prefs: Prefs, netmap: NetworkMap | None) -> None:
    """Validate the route prefs as a whole (nothing is applied if this raises)."""
    try:
        routes = parse_route_list(prefs.AdvertiseRoutes)
    except RouteError as exc:
        raise RoutingError(f"advertise-routes: {exc}") from None
    using = bool(prefs.ExitNodeIP or prefs.ExitNodeID)
    if using and any(r.prefixlen == 0 for r in routes):
        raise RoutingError("cannot advertise an exit node and use an exit node at the same time")
    if prefs.ExitNodeIP:
        try:
            ipaddress.ip_address(prefs.ExitNodeIP)
        except ValueError:
            raise RoutingError(f"exit-node: invalid IP {prefs.ExitNodeIP[:64]!r}") from None
        if netmap is not None and netmap.self_node is not None:
            if prefs.ExitNodeIP in _ips(netmap.self_node.Addresses):
                raise RoutingError("exit-node: cannot use this node as its own exit node")
            peer = netmap.peer_by_ip(prefs.ExitNodeIP)
            if peer is None:
                raise RoutingError(f"exit-node: no node with IP {prefs.ExitNodeIP} in the netmap")
            if not offers_exit(peer.AllowedIPs or []):
                name = peer.ComputedName or peer.Name.split(".", 1)[0] or prefs.ExitNodeIP
                raise RoutingError(f"exit-node: {name} does not offer an exit node (or it is "
                                   "not approved)")  # fmt: skip


def resolve_exit_node(prefs: Prefs, netmap: NetworkMap) -> str:
    """The chosen exit node's StableID ("" for none, or when its IP is not in the netmap)."""
    if prefs.ExitNodeIP:
        peer = netmap.peer_by_ip(prefs.ExitNodeIP)
        return (peer.StableID or str(peer.ID)) if peer is not None else ""
    return prefs.ExitNodeID


def _ips(addresses: Iterable[str]) -> list[str]:
    return [a.split("/", 1)[0] for a in addresses]


def _prefix(text: str) -> IPNetwork | None:
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError:
        return None  # host bits set, or garbage: skipped as tailscale does


def _is_address(net: IPNetwork) -> bool:
    if net.prefixlen != net.max_prefixlen:
        return False
    return net.network_address in (_CGNAT if net.version == 4 else _ULA)


def peer_allowed_ips(peer: Node, prefs: Prefs, exit_id: str) -> tuple[str, ...]:
    """What WireGuard routes to ``peer`` (see the module docstring)."""
    raw = peer.AllowedIPs if peer.AllowedIPs is not None else peer.Addresses
    is_exit = bool(exit_id) and exit_id in (peer.StableID, str(peer.ID))
    out: list[str] = []
    for text in raw:
        net = _prefix(text)
        if net is None:
            continue
        if net.prefixlen == 0:
            if is_exit:
                out.append(str(net))
        elif _is_address(net) or text in peer.Addresses or prefs.RouteAll:
            out.append(str(net))
    if is_exit:  # fill in whichever /0 control did not send
        out.extend(str(r) for r in EXIT_ROUTES if str(r) not in out)
    return tuple(sorted(set(out)))


def jailed_nets(peers: Iterable[Node]) -> tuple[IPNetwork, ...]:
    """The source prefixes of jailed peers (``IsJailed``: nodes shared in from another
    tailnet), which the packet filter judges as under shields up (docs/protocol/policy.md
    §3.3 step 5, §6). A /0 is left out: it would jail every other peer too (tailscale
    looks the source up by longest prefix; a range check cannot)."""
    out: set[IPNetwork] = set()
    for p in peers:
        if not p.IsJailed:
            continue
        for text in (*p.Addresses, *(p.AllowedIPs or ())):
            net = _prefix(text)
            if net is not None and net.prefixlen != 0:
                out.add(net)
    return tuple(sorted(out, key=lambda n: (n.version, n)))


def advertised(prefs: Prefs) -> tuple[IPNetwork, ...]:
    try:
        return tuple(parse_route_list(prefs.AdvertiseRoutes))
    except RouteError:
        return ()  # refused at set time; a corrupt state file serves nothing


def router_config(prefs: Prefs, netmap: NetworkMap, exit_id: str) -> Config:
    """The OS side for this netmap: addresses, table-52 routes, LAN access, served routes."""
    me = netmap.self_node
    if me is None:
        return Config()
    base = Config.for_addresses(me.Addresses)
    if not base.local_addrs:
        return base
    routes: set[IPNetwork] = set(TAILNET_ROUTES)
    using_exit = False
    for p in netmap.peers.values():
        for text in peer_allowed_ips(p, prefs, exit_id):
            net = ipaddress.ip_network(text)
            if net.prefixlen == 0:
                using_exit = True
            elif not _is_address(net):
                routes.add(net)
    if using_exit or prefs.ExitNodeIP:  # chosen but gone: blackhole, never leak (tailscale)
        routes.update(EXIT_ROUTES)
    ordered = tuple(sorted(routes, key=lambda n: (n.version, int(n.network_address), n.prefixlen)))
    return Config(
        local_addrs=base.local_addrs, routes=ordered,
        exit_lan_access=prefs.ExitNodeAllowLANAccess, subnet_routes=advertised(prefs),
        snat=not prefs.NoSNAT,
    )  # fmt: skip


def filter_local_nets(prefs: Prefs, addresses: Iterable[str]) -> list[IPNetwork]:
    """The packet filter's local set: our addresses and the routes we serve (§5.7)."""
    out = [ipaddress.ip_network(a) for a in _ips(addresses)]
    out.extend(advertised(prefs))
    return out


HEALTH_PREFIXES = ("exit node:", "subnet router:")


def health(prefs: Prefs, netmap: NetworkMap, exit_id: str, forwarding: str | None) -> list[str]:
    """Warnings for ``status`` (tailscale's health messages, our wording)."""
    out: list[str] = []
    if prefs.ExitNodeIP:
        peer = netmap.peer_by_ip(prefs.ExitNodeIP)
        if peer is None or not exit_id:
            out.append(f"exit node: {prefs.ExitNodeIP} is not in the netmap; internet traffic "
                       "is blocked until it returns")  # fmt: skip
        elif not offers_exit(peer.AllowedIPs or []):
            out.append(f"exit node: {prefs.ExitNodeIP} no longer offers an exit node")
    if forwarding and advertised(prefs):
        out.append(f"subnet router: {forwarding}")
    return out
