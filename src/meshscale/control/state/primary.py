"""HA primary-route election (docs/protocol/policy.md §5.6). Pure: no I/O, no clock.

For each non-exit prefix, the candidates are the nodes that advertise it, have it approved
and are *available* (online, not expired, and their map stream not gone for longer than
the route grace, see ``mapper.poll.ROUTE_GRACE``). The current primary stays while it is a
candidate (no fail-back, so a returning router never takes the route back); otherwise the
lowest node ID wins; with no candidate the prefix is unserved. An unapproved route is never
a candidate, so failover never lands on one (Headscale #1706), and a router that joined later
is a candidate like any other (#2228); when every router was gone, the first to return
becomes primary (#3203).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from meshscale.control.models import IPPrefix, NodeID


def elect(
    current: Mapping[IPPrefix, NodeID], candidates: Mapping[NodeID, Iterable[IPPrefix]]
) -> dict[IPPrefix, NodeID]:
    """The new primary per prefix from the current one and each available node's served
    non-exit prefixes."""
    by_prefix: dict[IPPrefix, set[NodeID]] = {}
    for nid, prefixes in candidates.items():
        for p in prefixes:
            if p.prefixlen > 0:
                by_prefix.setdefault(p, set()).add(nid)
    out: dict[IPPrefix, NodeID] = {}
    for p, ids in by_prefix.items():
        cur = current.get(p)
        out[p] = cur if cur is not None and cur in ids else min(ids)
    return out


def per_node(primaries: Mapping[IPPrefix, NodeID]) -> dict[NodeID, tuple[IPPrefix, ...]]:
    """Each primary node's prefixes, sorted (the ``Node.primary`` field)."""
    out: dict[NodeID, list[IPPrefix]] = {}
    for p, nid in primaries.items():
        out.setdefault(nid, []).append(p)
    return {
        nid: tuple(sorted(ps, key=lambda n: (n.version, int(n.network_address), n.prefixlen)))
        for nid, ps in out.items()
    }
