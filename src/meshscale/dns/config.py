"""Resolver configuration built from the netmap: peers' MagicDNS names, ExtraRecords,
split-DNS routes and fallback resolvers (tailcfg.DNSConfig; docs/protocol/control.md §6.2)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field

from meshscale.tailcfg.dns import DNSConfig
from meshscale.tailcfg.node import Node

IPAddr = ipaddress.IPv4Address | ipaddress.IPv6Address


def fqdn(name: str) -> str:
    """Lower-case, trailing-dot form used as every table key."""
    name = name.strip().lower()
    return name if name.endswith(".") else name + "."


@dataclass(slots=True)
class ResolverConfig:
    hosts: dict[str, list[IPAddr]] = field(default_factory=dict)
    # Split DNS: suffix -> upstream "ip" / "ip:port"; an empty list means answer locally.
    routes: dict[str, list[str]] = field(default_factory=dict)
    fallback: list[str] = field(default_factory=list)
    ttl: int = 600

    def reverse(self) -> dict[str, str]:
        """PTR table: reverse-pointer name -> FQDN."""
        out: dict[str, str] = {}
        for name, addrs in self.hosts.items():
            for a in addrs:
                out.setdefault(fqdn(a.reverse_pointer), name)
        return out


def _addr(text: str) -> IPAddr | None:
    try:
        return ipaddress.ip_address(text.split("/", 1)[0])
    except ValueError:
        return None


def from_netmap(dns: DNSConfig, self_node: Node | None, peers: Iterable[Node]) -> ResolverConfig:
    cfg = ResolverConfig()
    for n in ([self_node] if self_node else []) + list(peers):
        if not n.Name:
            continue
        addrs = [a for a in (_addr(x) for x in n.Addresses) if a is not None]
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
    for suffix, resolvers in dns.Routes.items():
        cfg.routes[fqdn(suffix)] = [r.Addr for r in resolvers if r.Addr]
    cfg.fallback = [r.Addr for r in (dns.Resolvers or dns.FallbackResolvers) if r.Addr]
    return cfg
