"""Advertised routes: parsing and validation (tailscale net/netutil CalcAdvertiseRoutes, stricter).

``calc_advertise_routes(text, exit_node)`` turns ``--advertise-routes`` and
``--advertise-exit-node`` into the sorted prefix list that goes into ``Prefs.AdvertiseRoutes``
and ``Hostinfo.RoutableIPs``; ``check_advertise_routes(prefixes)`` validates a stored or
requested list. Both raise :class:`RouteError` with one line naming the offending value, so
nothing is installed half-way: a request is checked whole before anything changes.

Refused: text that is not a prefix, a bare address (a host, not a route: write ``/32``),
host bits set (``10.0.0.1/24``), more than MAX_ADVERTISED_ROUTES prefixes, duplicates and
overlapping prefixes, prefixes that cover the tailnet's own ranges (100.64.0.0/10,
fd7a:115c:a1e0::/48) or loopback, link-local and multicast space, and one exit route without
the other. Performs no I/O.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from .config import TAILNET_ROUTES, IPNetwork

MAX_ADVERTISED_ROUTES = 1024  # what control keeps of Hostinfo.RoutableIPs
EXIT_V4 = ipaddress.ip_network("0.0.0.0/0")
EXIT_V6 = ipaddress.ip_network("::/0")
EXIT_ROUTES: tuple[IPNetwork, IPNetwork] = (EXIT_V4, EXIT_V6)
_NOT_ROUTABLE: tuple[tuple[IPNetwork, str], ...] = (
    (ipaddress.ip_network("127.0.0.0/8"), "loopback"),
    (ipaddress.ip_network("::1/128"), "loopback"),
    (ipaddress.ip_network("169.254.0.0/16"), "link-local"),
    (ipaddress.ip_network("fe80::/10"), "link-local"),
    (ipaddress.ip_network("224.0.0.0/4"), "multicast"),
    (ipaddress.ip_network("ff00::/8"), "multicast"),
)


class RouteError(ValueError):
    """An advertised route list that cannot be used; the message is for the user."""


def _sort_key(p: IPNetwork) -> tuple[int, int, int]:
    return (p.version, int(p.network_address), p.prefixlen)


def parse_prefix(text: str) -> IPNetwork:
    """One route in CIDR form, strictly (no host bits). Raises RouteError."""
    t = text.strip()
    if not t:
        raise RouteError("empty route")
    if "/" not in t:
        try:
            ip = ipaddress.ip_address(t)
        except ValueError:
            raise RouteError(f"invalid route {t[:64]!r}: not an IP prefix (CIDR)") from None
        raise RouteError(f"{t} is a host address, not a route; write {ip}/{ip.max_prefixlen}")
    try:
        return ipaddress.ip_network(t, strict=True)
    except ValueError:
        pass
    try:
        net = ipaddress.ip_network(t, strict=False)
    except ValueError:
        raise RouteError(f"invalid route {t[:64]!r}: not an IP prefix (CIDR)") from None
    raise RouteError(f"{t} has host bits set; did you mean {net}?")


def check_advertise_routes(prefixes: Iterable[IPNetwork]) -> list[IPNetwork]:
    """Validate a route list as a whole; returns it sorted. Raises RouteError."""
    nets = list(prefixes)
    if len(nets) > MAX_ADVERTISED_ROUTES:
        raise RouteError(
            f"{len(nets)} routes advertised; at most {MAX_ADVERTISED_ROUTES} are allowed "
            "(summarise them into larger prefixes)"
        )
    has4, has6 = EXIT_V4 in nets, EXIT_V6 in nets
    if has4 != has6:
        raise RouteError(
            "0.0.0.0/0 and ::/0 go together: use --advertise-exit-node instead of listing one"
        )
    subnets = sorted((n for n in nets if n.prefixlen > 0), key=_sort_key)
    for n in subnets:
        for t in TAILNET_ROUTES:
            if n.version == t.version and n.overlaps(t):
                raise RouteError(
                    f"{n} overlaps the tailnet's own range {t}; it cannot be advertised"
                )
        for bad, what in _NOT_ROUTABLE:
            if n.version == bad.version and n.overlaps(bad):
                raise RouteError(f"{n} overlaps {what} space {bad}; it cannot be advertised")
    # Sorted by (version, start, length): an overlap is always with a kept earlier prefix
    # whose end is at or past this start.
    last: IPNetwork | None = None
    for n in subnets:
        if last is not None and last.version == n.version and last.overlaps(n):
            if last == n:
                raise RouteError(f"{n} is listed twice")
            raise RouteError(f"{last} and {n} overlap; advertise one of them")
        if (
            last is None
            or last.version != n.version
            or int(n.broadcast_address) > int(last.broadcast_address)
        ):
            last = n
    out = subnets + ([EXIT_V4, EXIT_V6] if has4 else [])
    return sorted(out, key=_sort_key)


def calc_advertise_routes(text: str, exit_node: bool) -> list[IPNetwork]:
    """``--advertise-routes`` (comma-separated) plus ``--advertise-exit-node``, validated."""
    nets = [parse_prefix(p) for p in text.split(",") if p.strip()] if text.strip() else []
    if exit_node:
        nets = [n for n in nets if n not in EXIT_ROUTES] + [EXIT_V4, EXIT_V6]
    return check_advertise_routes(nets)


def parse_route_list(items: Iterable[str]) -> list[IPNetwork]:
    """Prefs.AdvertiseRoutes as stored (strings), validated. Raises RouteError."""
    return check_advertise_routes(parse_prefix(i) for i in items)


def is_exit_route(p: IPNetwork) -> bool:
    return p.prefixlen == 0


def offers_exit(allowed_ips: Iterable[str]) -> bool:
    """Both /0s in a peer's AllowedIPs: it offers an exit node (tsaddr.ContainsExitRoutes)."""
    s = set(allowed_ips)
    return "0.0.0.0/0" in s and "::/0" in s
