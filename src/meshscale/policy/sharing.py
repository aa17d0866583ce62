"""Guests: nodes of other tailnets that a node of this tailnet is shared with.

Node sharing (docs/protocol/policy.md §6): the *sharer's* policy governs access to a
shared node S. A recipient's device R is a guest of S's tailnet; in that tailnet's
policy R is selected only by ``*``, ``autogroup:shared``, ``autogroup:danger-all`` or a
prefix/host holding one of its addresses, never by a user, group or tag (those name this
tailnet's identities). R and S are peers iff the share exists and some rule lets R reach
S (§6 item 2). Nothing here lets S reach R: the recipient's side is one-way
(TS-2024-005; the recipient's map marks S ``IsJailed``).

The ``*`` sent as a source to a recipient's devices (CGNAT and the ULA) still covers a
shared-in node's addresses, so :func:`cut_ranges` takes them out of it (§6 item 1, the
second half of "do both"). On the shared node's side, :func:`confine_guests` keeps its
guests to its own addresses: it never routes for them (ts#10642).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from meshscale.policy.manager import IPAddress
from meshscale.policy.model import Rule
from meshscale.tailcfg import FilterRule, NetPortRange

_GUEST_AUTOGROUPS = frozenset({"shared", "danger-all"})
EVERY_ADDRESS: Final = ("0.0.0.0/0", "::/0")  # what "*" stands for, as ranges that can be cut


@dataclass(frozen=True, slots=True)
class Guest:
    """A node of another tailnet (``id``, ``addrs``) and the ids of this tailnet's nodes
    shared to its user (``shared``)."""

    id: int
    addrs: tuple[IPAddress, ...]
    shared: frozenset[int]


def selects_guest(rule: Rule, guest: Guest) -> bool:
    """Whether one of ``rule``'s sources selects ``guest`` (see the module docstring)."""
    for a in rule.src:
        if a.kind == "wildcard" or (a.kind == "autogroup" and a.name in _GUEST_AUTOGROUPS):
            return True
        p = a.prefix
        if a.kind in ("prefix", "host") and p is not None and any(x in p for x in guest.addrs):
            return True
    return False


def names_shared(rule: Rule) -> bool:
    """Whether ``rule`` lists ``autogroup:shared`` as a source (its SrcIPs then hold the
    guests' addresses, which ``*`` does not name once cut)."""
    return any(a.kind == "autogroup" and a.name == "shared" for a in rule.src)


def _bounds(text: str) -> tuple[int, int, int]:
    if "-" in text:
        lo, hi = (ipaddress.ip_address(x) for x in text.split("-", 1))
        return lo.version, int(lo), int(hi)
    net = ipaddress.ip_network(text, strict=False)
    return net.version, int(net.network_address), int(net.broadcast_address)


def _fmt(version: int, lo: int, hi: int) -> list[str]:
    """One [lo, hi] range in the client's accepted forms: an address, a prefix, or a-b
    (docs/protocol/policy.md §2.2)."""
    mk = ipaddress.IPv4Address if version == 4 else ipaddress.IPv6Address
    a, b = mk(lo), mk(hi)
    if lo == hi:
        return [str(a)]
    nets = list(ipaddress.summarize_address_range(a, b))  # type: ignore[type-var]
    if len(nets) == 1:
        return [str(nets[0])]
    return [f"{a}-{b}"]


def cut_ranges(ranges: Iterable[str], addrs: Iterable[IPAddress]) -> tuple[str, ...]:
    """``ranges`` (addresses, prefixes or a-b) without the addresses ``addrs``."""
    holes: dict[int, list[int]] = {4: [], 6: []}
    for x in addrs:
        holes[x.version].append(int(x))
    out: list[str] = []
    for text in ranges:
        version, lo, hi = _bounds(text)
        inside = sorted(h for h in set(holes[version]) if lo <= h <= hi)
        if not inside:
            out.append(text)
            continue
        for h in inside:
            if lo < h:
                out.extend(_fmt(version, lo, h - 1))
            lo = h + 1
        if lo <= hi:
            out.extend(_fmt(version, lo, hi))
    return tuple(out)


def _covers(ranges: Iterable[str], addr: IPAddress) -> bool:
    for text in ranges:
        if text == "*":
            return True
        version, lo, hi = _bounds(text)
        if version == addr.version and lo <= int(addr) <= hi:
            return True
    return False


def confine_guests(
    rules: list[FilterRule], guests: Sequence[str], own: Sequence[str]
) -> list[FilterRule]:
    """A shared node's packet filter with its guests (``guests``: their addresses) admitted
    at its own addresses (``own``) only: a shared subnet router or exit node does not route
    for them, whatever the sharer's rule says as destination (``*``, a route, a range;
    ts#10642, docs/protocol/policy.md §6 item 5 on the packet side). Each rule whose sources
    cover a guest and whose destinations reach beyond ``own`` is split in two: the sources
    without the guests keep every destination; the guests get the destinations that hold
    one of ``own``, narrowed to it, with the same ports. Capability grants are kept."""
    if not guests:
        return rules
    addrs = [ipaddress.ip_address(g) for g in guests]
    mine = set(own)
    out: list[FilterRule] = []
    for r in rules:
        inside = [g for g in addrs if _covers(r.SrcIPs, g)]
        if r.CapGrant or not inside or all(d.IP in mine for d in r.DstPorts):
            out.append(r)
            continue
        src = [x for s in r.SrcIPs for x in (EVERY_ADDRESS if s == "*" else (s,))]
        rest = list(cut_ranges(src, inside))
        if rest:
            out.append(FilterRule(SrcIPs=rest, DstPorts=r.DstPorts, IPProto=list(r.IPProto)))
        narrowed: dict[tuple[str, int, int], NetPortRange] = {}
        for d in r.DstPorts:
            for o in own:
                if d.IP == "*" or _covers((d.IP,), ipaddress.ip_address(o)):
                    narrowed.setdefault((o, d.Ports.First, d.Ports.Last),
                                        NetPortRange(IP=o, Ports=d.Ports))  # fmt: skip
        if narrowed:
            guest_src = [str(g) for g in inside]
            dst = list(narrowed.values())
            out.append(FilterRule(SrcIPs=guest_src, DstPorts=dst, IPProto=list(r.IPProto)))
    return out
