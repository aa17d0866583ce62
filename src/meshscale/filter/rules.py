"""Control's FilterRules compiled to integer ranges, one list of matches per address family.

A rule (tailcfg.FilterRule, docs/protocol/derp-disco-stun.md §7.1) names sources (IPs, CIDRs, ranges
``a-b``, ``*``, or ``cap:<name>``), destinations with port ranges, and IP protocols (none
means TCP, UDP, ICMPv4 and ICMPv6). Entries of the other family are skipped, not refused.

Errors::

    FilterError (ValueError)   a FilterRule that cannot be compiled (the whole filter
                               is refused, as the official client does)

Performs no I/O.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from meshscale.packet.ip import IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP
from meshscale.tailcfg import FilterRule

DEFAULT_PROTOS = (IPPROTO_TCP, IPPROTO_UDP, IPPROTO_ICMP, IPPROTO_ICMPV6)
ALL_PORTS = (0, 65535)

Range = tuple[int, int]  # inclusive integer address range


class FilterError(ValueError):
    """A FilterRule that cannot be compiled."""


@dataclass(frozen=True, slots=True)
class Match:
    """One compiled rule for one address family (tailscale filtertype.Match)."""

    protos: frozenset[int]
    srcs: tuple[Range, ...]
    src_caps: tuple[str, ...]
    dsts: tuple[tuple[int, int, int, int], ...]  # (ip_lo, ip_hi, port_lo, port_hi)


def ip_range(text: str, family: int) -> Range | None:
    """Parse one IP entry for ``family``; None if the entry is of the other family."""
    bits = 32 if family == 4 else 128
    if text == "*":
        return (0, (1 << bits) - 1)
    try:
        if "-" in text:
            a_text, b_text = text.split("-", 1)
            a, b = ipaddress.ip_address(a_text), ipaddress.ip_address(b_text)
            if a.version != b.version or int(a) > int(b):
                raise FilterError(f"bad IP range {text!r}")
            return (int(a), int(b)) if a.version == family else None
        if "/" in text:
            net = ipaddress.ip_network(text, strict=True)
            if net.version != family:
                return None
            return (int(net.network_address), int(net.broadcast_address))
        ip = ipaddress.ip_address(text)
    except ValueError as exc:
        raise FilterError(f"bad IP {text!r}: {exc}") from exc
    return (int(ip), int(ip)) if ip.version == family else None


def compile_rules(rules: Iterable[FilterRule], family: int) -> list[Match]:
    """Compile FilterRules to matches for one family. Raises FilterError."""
    out: list[Match] = []
    for rule in rules:
        if rule.SrcBits:
            raise FilterError("SrcBits is deprecated and refused")
        protos = frozenset(p for p in rule.IPProto if 0 <= p <= 255) or frozenset(DEFAULT_PROTOS)
        srcs: list[Range] = []
        caps: list[str] = []
        for s in rule.SrcIPs:
            if s.startswith("cap:"):
                caps.append(s[4:])
            elif (r := ip_range(s, family)) is not None:
                srcs.append(r)
        dsts: list[tuple[int, int, int, int]] = []
        for d in rule.DstPorts:
            if d.Bits is not None:
                raise FilterError("DstPorts.Bits is deprecated and refused")
            first, last = d.Ports.First, d.Ports.Last
            if not 0 <= first <= last <= 65535:
                raise FilterError(f"bad port range {first}-{last}")
            if (r := ip_range(d.IP, family)) is not None:
                dsts.append((r[0], r[1], first, last))
        if (srcs or caps) and dsts:
            out.append(Match(protos, tuple(srcs), tuple(caps), tuple(dsts)))
    return out
