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
second half of "do both").
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from meshscale.policy.manager import IPAddress
from meshscale.policy.model import Rule

_GUEST_AUTOGROUPS = frozenset({"shared", "danger-all"})


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
