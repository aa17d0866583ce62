"""Resolver configuration built from the netmap: peers' MagicDNS names, ExtraRecords,
split-DNS routes, default upstreams and search domains (tailcfg.DNSConfig;
docs/protocol/control.md §6.2, docs/protocol/dns-oidc-console.md §2.1)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from meshscale.tailcfg.dns import DNSConfig
from meshscale.tailcfg.node import Node

IPAddr = ipaddress.IPv4Address | ipaddress.IPv6Address

QUAD100_V4 = ipaddress.IPv4Address("100.100.100.100")
QUAD100_V6 = ipaddress.IPv6Address("fd7a:115c:a1e0::53")
QUAD100_NAME = "magicdns.localhost-tailscale-daemon."
# Zones tailscaled answers locally when MagicDNS is on, whatever the server's prefixes.
CGNAT_REVERSE_ZONES: tuple[str, ...] = (
    *(f"{i}.100.in-addr.arpa." for i in range(64, 128)),
    "0.e.1.a.c.5.1.1.a.7.d.f.ip6.arpa.",
)
CAP_MAGICDNS_AAAA = "magicdns-aaaa"


def fqdn(name: str) -> str:
    """Lower-case, trailing-dot form used as every table key."""
    name = name.strip().lower()
    return name if name.endswith(".") else name + "."


def magic_dns_suffix(self_name: str) -> str:
    """The MagicDNS suffix from our own node name: everything after the first label,
    without dots at either end ("n1.lab.example." -> "lab.example")."""
    parts = self_name.strip(".").split(".", 1)
    return parts[1] if len(parts) == 2 else ""


@dataclass(slots=True)
class ResolverConfig:
    hosts: dict[str, list[IPAddr]] = field(default_factory=dict)
    # Split DNS: suffix -> upstream "ip" / "ip:port"; an empty list means answer locally.
    routes: dict[str, list[str]] = field(default_factory=dict)
    # Default ("."-route) upstreams: Resolvers, else the OS's original nameservers.
    fallback: list[str] = field(default_factory=list)
    search: list[str] = field(default_factory=list)  # search domains, FQDN without dot
    ttl: int = 600

    def reverse(self) -> dict[str, str]:
        """PTR table: reverse-pointer name -> FQDN."""
        out: dict[str, str] = {fqdn(QUAD100_V4.reverse_pointer): QUAD100_NAME}
        for name, addrs in self.hosts.items():
            for a in addrs:
                out.setdefault(fqdn(a.reverse_pointer), name)
        return out


def _addr(text: str) -> IPAddr | None:
    try:
        return ipaddress.ip_address(text.split("/", 1)[0])
    except ValueError:
        return None


def from_netmap(
    dns: DNSConfig,
    self_node: Node | None,
    peers: Iterable[Node],
    *,
    os_resolvers: Sequence[str] = (),
    exit_node: bool = False,
) -> ResolverConfig:
    """tailscaled's dnsConfigForNetmap: hosts always; routes, defaults and search domains.

    ``os_resolvers`` are the nameservers of the system's own configuration (before we
    replaced it): the defaults when the control server does not override local DNS.
    """
    cfg = ResolverConfig()
    caps = self_node.CapMap if self_node is not None else {}
    aaaa = CAP_MAGICDNS_AAAA in caps
    for n in ([self_node] if self_node else []) + list(peers):
        if not n.Name:
            continue
        addrs = [a for a in (_addr(x) for x in n.Addresses) if a is not None]
        if not aaaa and any(a.version == 4 for a in addrs):
            addrs = [a for a in addrs if a.version == 4]  # tailscaled ts#1152
        if addrs:
            cfg.hosts.setdefault(fqdn(n.Name), []).extend(addrs)
    for rec in dns.ExtraRecords:
        a = _addr(rec.Value)
        if a is None or not rec.Name:
            continue
        want = rec.Type.upper() or ("AAAA" if a.version == 6 else "A")
        if (want == "A") != (a.version == 4):
            continue  # type/value mismatch: ignore rather than answer wrongly
        cfg.hosts.setdefault(fqdn(rec.Name), []).append(a)
    cfg.search = [d.strip(".").lower() for d in dns.Domains if d.strip(".")]
    if dns.Proxied:
        suffix = magic_dns_suffix(self_node.Name) if self_node is not None else ""
        if suffix:
            cfg.routes[fqdn(suffix)] = []
        for zone in CGNAT_REVERSE_ZONES:
            cfg.routes[zone] = []
    for suffix, resolvers in dns.Routes.items():
        cfg.routes[fqdn(suffix)] = [r.Addr for r in resolvers if r.Addr]
    defaults = [r.Addr for r in dns.Resolvers if r.Addr]
    if not defaults:
        defaults = list(os_resolvers)
    if not defaults and exit_node:
        defaults = [r.Addr for r in dns.FallbackResolvers if r.Addr]
    cfg.fallback = defaults
    return cfg
