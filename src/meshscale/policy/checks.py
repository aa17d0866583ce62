"""The policy's ``tests`` section, evaluated against the compiled filters.

A test passes when the destination node's filter admits (``accept``) or refuses
(``deny``) a flow from every source address with the test's protocol (TCP by default) to
the destination on its port, as tailscaled would judge the first packet
(docs/protocol/policy.md §3.3, §1.7). A failing test refuses the policy.
"""

from __future__ import annotations

import ipaddress

from meshscale.policy.compile import Compiled, NodeView
from meshscale.policy.manager import IPAddress, PolicyError
from meshscale.policy.model import Alias
from meshscale.tailcfg import FilterRule

_DEFAULT_PROTOS = (6, 17, 1, 58)


def _in(addr: IPAddress, spec: str, local: tuple[IPAddress, ...]) -> bool:
    if spec == "*":
        return not local or addr in local
    if "-" in spec:
        lo, hi = (ipaddress.ip_address(x) for x in spec.split("-", 1))
        return lo.version == addr.version and lo <= addr <= hi  # type: ignore[operator]
    net = ipaddress.ip_network(spec, strict=False)
    return net.version == addr.version and addr in net


def admits(rules: list[FilterRule], src: IPAddress, dst: IPAddress, proto: int, port: int,
           local: tuple[IPAddress, ...] = ()) -> bool:  # fmt: skip
    """Whether a new flow src → dst:port/proto matches one of ``rules`` (one node's filter;
    ``local`` = that node's addresses, which ``*`` means)."""
    for r in rules:
        if (r.IPProto or list(_DEFAULT_PROTOS)).count(proto) == 0:
            continue
        if not any(s == "*" or _in(src, s, ()) for s in r.SrcIPs):
            continue
        for d in r.DstPorts:
            if d.Ports.First <= port <= d.Ports.Last and _in(dst, d.IP, local):
                return True
    return False


def _addrs(c: Compiled, a: Alias) -> list[tuple[IPAddress, NodeView | None]]:
    """The addresses an alias names, each with the node that holds (or routes) it."""
    if a.prefix is not None:
        addr = a.prefix.network_address
        owners = [n for n in c.nodes.values() if addr in n.addrs]
        owners = owners or [n for n in c.nodes.values() if any(addr in r for r in n.routes)]
        return [(addr, o) for o in owners] or [(addr, None)]
    return [(x, n) for n in c.nodes.values() if c.matches(a, n) for x in n.addrs]


def run_tests(c: Compiled) -> list[str]:
    """Raise PolicyError naming the first failing test. Returns warnings for the checks
    that could not run because an alias names no device yet (e.g. at first start):
    refusing those would make a policy unloadable before its nodes register."""
    skipped: list[str] = []
    for t in c.policy.tests:
        srcs = [x for x, _ in _addrs(c, t.src)]
        if not srcs:
            skipped.append(f'test at {t.at} not run: source "{t.src}" names no device')
            continue
        for want, entries in ((True, t.accept), (False, t.deny)):
            for alias, port in entries:
                dsts = _addrs(c, alias)
                if not dsts:
                    skipped.append(f'test at {t.at}: "{alias}" names no device; not checked')
                for dst, holder in dsts:
                    rules = c.filter_for(holder.id) if holder is not None else []
                    local = holder.addrs if holder is not None else ()
                    for src in srcs:
                        if src.version != dst.version:
                            continue
                        if admits(rules, src, dst, t.proto, port, local) != want:
                            verb = "accept" if want else "deny"
                            raise PolicyError(
                                f"test at {t.at} failed: {t.src} → {alias}:{port} should {verb} "
                                f"(from {src} to {dst})"
                            )
    return skipped
