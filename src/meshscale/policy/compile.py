"""Compilation: a validated Policy over a tailnet → per-node packet filters and peer sets.

:class:`Compiled` holds one policy resolved against the current nodes and users. Each rule
keeps the ids of its source nodes and destination nodes; each node keeps the rules it is
a source or destination of. A node write re-tests only that node against each rule's
aliases (O(rules), never O(nodes²)) and reports the nodes whose filter or peers it moved
(docs/protocol/policy.md §4.3). Filters follow §3: destination-only, SaaS ``*`` ranges,
single hosts without a prefix length, rules merged by (SrcIPs, IPProto), no Bits.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from meshscale.policy.manager import IPAddress, PolicyNode, PolicyUser
from meshscale.policy.model import Alias, IPPrefix, Policy, Rule
from meshscale.policy.sharing import EVERY_ADDRESS, confine_guests, cut_ranges, names_shared
from meshscale.tailcfg import CapGrant, FilterRule, NetPortRange, PortRange

# `*` as a source (§2.2): CGNAT minus 100.115.92.0/23, and the Tailscale ULA.
WILDCARD_SRC: Final = ("100.64.0.0-100.115.91.255", "100.115.94.0-100.127.255.255",
                       "fd7a:115c:a1e0::/48")  # fmt: skip
# autogroup:internet as sent to an approved exit node (§2.3).
INTERNET: Final = (
    "0.0.0.0-9.255.255.255", "11.0.0.0-100.63.255.255", "100.128.0.0-169.253.255.255",
    "169.255.0.0-172.15.255.255", "172.32.0.0-192.167.255.255", "192.169.0.0-255.255.255.255",
    "2000::-3fff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
)  # fmt: skip
_DEFAULT_V4: Final = ipaddress.ip_network("0.0.0.0/0")
_DEFAULT_V6: Final = ipaddress.ip_network("::/0")
# The node key each autogroup selects (shared: no one in a single tailnet; nonroot: ssh).
_AUTOGROUP_KEYS: Final[dict[str, object]] = {
    "member": "member", "tagged": "tagged", "danger-all": "*", "internet": "exit", "self": "member",
}  # fmt: skip
ALLOW_ALL_RULE: Final = Rule((Alias("wildcard", "*"),), (Alias("wildcard", "*"),))


@dataclass(frozen=True, slots=True)
class NodeView:
    """A snapshot of what the policy reads of a node (callers may mutate their own)."""

    id: int
    user_id: int
    tags: tuple[str, ...]
    addrs: tuple[IPAddress, ...]
    routes: tuple[IPPrefix, ...]  # approved and announced, non-exit
    exit: bool  # an approved exit node
    keyed: tuple[tuple[tuple[int, int], str], ...] = ()  # ((version, int), text) per address

    @staticmethod
    def of(node: PolicyNode) -> NodeView:
        announced = set(node.announced_routes())
        served = [r for r in node.approved_routes if r in announced]
        exit_ = _DEFAULT_V4 in served or _DEFAULT_V6 in served
        routes = tuple(r for r in served if r.prefixlen != 0)
        addrs = tuple(sorted(node.addresses(), key=lambda a: (a.version, int(a))))
        keyed = tuple(((a.version, int(a)), str(a)) for a in addrs)
        return NodeView(node.id, node.user_id, tuple(node.tags), addrs, routes, exit_, keyed)

    @property
    def tagged(self) -> bool:
        return bool(self.tags)


def host_str(p: IPPrefix) -> str:
    return str(p.network_address) if p.num_addresses == 1 else str(p)


def _ip_key(s: str) -> tuple[int, int, str]:
    head = s.split("-", 1)[0].split("/", 1)[0]
    try:
        a = ipaddress.ip_address(head)
    except ValueError:
        return (9, 0, s)
    return (a.version, int(a), s)


def sort_ips(ips: Iterable[str]) -> list[str]:
    return sorted(set(ips), key=_ip_key)


@dataclass(slots=True)
class CRule:
    """A rule resolved against the tailnet. ``self_dst``: its only destination is
    autogroup:self (a grant that mixes self with others is split in two)."""

    rule: Rule
    dst: tuple[Alias, ...]
    self_dst: bool
    src_nodes: set[int]  # nodes the sources select (for peers)
    dst_nodes: set[int]
    wildcard_src: bool
    ip_nodes: set[int]  # sources listed by address (not only through `*`)
    src_ips: tuple[str, ...] | None = None  # cached SrcIPs (not for self rules)


def resolve_users(
    policy: Policy, users: Iterable[PolicyUser], strict: bool = True
) -> dict[str, frozenset[int]]:
    """Every user alias in the policy → the user ids it names (provider id, then email or
    name; ``alice@`` is the name alice). An unknown user names no one. ``strict``: raise
    ValueError for an alias that matches several users (else it names no one)."""
    ulist = list(users)
    names: set[str] = {m for ms in policy.groups.values() for m in ms}
    for a in _all_aliases(policy):
        if a.kind == "user":
            names.add(a.name)
    by_provider: dict[str, list[int]] = {}
    by_name: dict[str, list[int]] = {}
    by_email_or_name: dict[str, list[int]] = {}
    for u in ulist:
        if u.provider_id:
            by_provider.setdefault(u.provider_id, []).append(u.id)
        by_name.setdefault(u.name, []).append(u.id)
        for key in {u.email, u.name} - {""}:
            by_email_or_name.setdefault(key, []).append(u.id)
    out: dict[str, frozenset[int]] = {}
    for name in names:
        bare = name[:-1] if name.endswith("@") else name
        hit = by_provider.get(name, [])
        if not hit:
            hit = by_email_or_name.get(bare, [])
            if name.endswith("@"):
                hit = by_name.get(bare, []) or hit
        if len(set(hit)) > 1:
            if strict:
                raise ValueError(f'user "{name}" matches {len(set(hit))} users')
            hit = []
        out[name] = frozenset(hit)
    return out


def _all_aliases(policy: Policy) -> Iterable[Alias]:
    for r in policy.rules or ():
        yield from r.src
        yield from r.dst
    for owners in policy.tag_owners.values():
        yield from owners
    for _, owners in policy.route_approvers:
        yield from owners
    yield from policy.exit_approvers
    for t in policy.tests:
        yield t.src
        yield from (a for a, _ in t.accept + t.deny)


class Compiled:
    """One policy resolved over the tailnet; see the module docstring."""

    def __init__(
        self,
        policy: Policy,
        users: Iterable[PolicyUser],
        nodes: Iterable[NodeView],
        strict: bool = True,
    ) -> None:
        self._setup(policy, list(users), strict)
        for n in {n.id: n for n in nodes}.values():  # the last write of an id wins
            self._add(n)

    @classmethod
    def blank(cls, policy: Policy, users: list[PolicyUser], strict: bool) -> Compiled:
        """``policy`` resolved against ``users`` with no nodes yet (see :mod:`.incremental`,
        which fills in the rest from a previous Compiled)."""
        c = cls.__new__(cls)
        c._setup(policy, users, strict)
        return c

    def _setup(self, policy: Policy, ulist: list[PolicyUser], strict: bool) -> None:
        self.policy = policy
        self.user_ids = resolve_users(policy, ulist, strict)
        self.group_users = {
            g: frozenset(u for m in ms for u in self.user_ids.get(m, ()))
            for g, ms in policy.groups.items()
        }
        for g in policy.idp_groups:  # group:NAME from the IdP: users whose groups hold NAME
            self.group_users[g] = frozenset(u.id for u in ulist if g[6:] in u.groups)
        rules = ALLOW_ALL_RULE if policy.rules is None else None
        self.rules: list[CRule] = []
        for r in (rules,) if rules else policy.rules or ():
            selfs = tuple(d for d in r.dst if d.kind == "autogroup" and d.name == "self")
            others = tuple(d for d in r.dst if not (d.kind == "autogroup" and d.name == "self"))
            for dst, is_self in ((others, False), (selfs, True)):
                if dst:
                    # (danger-all too: both change with the shared-in addresses, §6 item 1)
                    wild = any(a.kind == "wildcard" or (a.kind == "autogroup"
                                                        and a.name == "danger-all")
                               for a in r.src)  # fmt: skip
                    self.rules.append(CRule(r, dst, is_self, set(), set(), wild, set()))
        self.nodes: dict[int, NodeView] = {}
        self.src_of: dict[int, list[int]] = {}  # node → rule indexes, in rule order
        self.dst_of: dict[int, list[int]] = {}
        self.ipsrc_of: dict[int, list[int]] = {}
        self.user_nodes: dict[int, set[int]] = {}  # untagged nodes per user
        self.routes: dict[int, tuple[IPPrefix, ...]] = {}  # nodes with served subnet routes
        self._filters: dict[int, tuple[FilterRule, ...]] = {}
        self._wild: tuple[str, ...] | None = None
        self._self_ips: dict[int, dict[int, tuple[str, ...]]] = {}  # user → rule → SrcIPs
        # Node sharing (sharing.py), set by the engine: addresses of nodes shared in from
        # other tailnets (cut out of `*`), and per shared node the addresses of its guests
        # (the SrcIPs autogroup:shared adds to that node's filter).
        self.shared_in: frozenset[IPAddress] = frozenset()
        self.guest_ips: dict[int, tuple[str, ...]] = {}
        self.key_nodes: dict[object, set[int]] = {}  # node key (_node_keys) → node ids
        self._build_index()

    # ---- alias matching -----------------------------------------------------------------

    def matches(self, a: Alias, n: NodeView) -> bool:
        k = a.kind
        if k == "wildcard":
            return True
        if k == "user":
            return not n.tagged and n.user_id in self.user_ids.get(a.name, ())
        if k == "group":
            return not n.tagged and n.user_id in self.group_users.get(a.name, ())
        if k == "tag":
            return a.name in n.tags
        if k in ("prefix", "host"):
            p = a.prefix
            assert p is not None
            return any(x in p for x in n.addrs) or any(
                r.overlaps(p) for r in n.routes if r.version == p.version
            )
        # autogroups
        return {
            "member": not n.tagged, "tagged": n.tagged, "danger-all": True, "internet": n.exit,
        }.get(a.name, False)  # fmt: skip

    def _alias_keys(self, a: Alias) -> list[object] | None:
        """The node keys (see :meth:`_node_keys`) an alias selects; None: test each node."""
        k = a.kind
        if k == "wildcard":
            return ["*"]
        if k == "user":
            return [("u", u) for u in self.user_ids.get(a.name, ())]
        if k == "group":
            return [("u", u) for u in self.group_users.get(a.name, ())]
        if k == "tag":
            return [("t", a.name)]
        if k == "autogroup":
            key = _AUTOGROUP_KEYS.get(a.name)
            return [key] if key else []
        return None

    @staticmethod
    def _node_keys(n: NodeView) -> list[object]:
        keys: list[object] = ["*", "exit"] if n.exit else ["*"]
        if n.tagged:
            return [*keys, "tagged", *(("t", t) for t in n.tags)]
        return [*keys, "member", ("u", n.user_id)]

    def _build_index(self) -> None:
        """Rules by the node keys their aliases select, so a node's roles cost O(its keys)
        rather than O(rules * aliases); prefix aliases and via rules are tested per node."""
        self._si: dict[object, set[int]] = {}
        self._ii: dict[object, set[int]] = {}
        self._di: dict[object, set[int]] = {}
        self._src_scan: list[int] = []
        self._dst_scan: list[int] = []
        for i, cr in enumerate(self.rules):
            for a in cr.rule.src:
                keys = self._alias_keys(a)
                if keys is None:
                    self._src_scan.append(i)
                    continue
                for key in keys:
                    self._si.setdefault(key, set()).add(i)
                    if key != "*":  # listed by address, not only through `*`
                        self._ii.setdefault(key, set()).add(i)
            if cr.rule.via:
                self._dst_scan.append(i)
                continue
            for a in cr.dst:
                keys = self._alias_keys(a)
                if keys is None:
                    self._dst_scan.append(i)
                    continue
                for key in keys:
                    self._di.setdefault(key, set()).add(i)

    def _roles(self, n: NodeView, keys: list[object]) -> tuple[list[int], list[int], list[int]]:
        src: set[int] = set()
        dst: set[int] = set()
        ipsrc: set[int] = set()
        for key in keys:
            src.update(self._si.get(key, ()))
            ipsrc.update(self._ii.get(key, ()))
            dst.update(self._di.get(key, ()))
        for i in self._src_scan:
            if i not in src and any(self.matches(a, n) for a in self.rules[i].rule.src):
                src.add(i)
        for i in self._dst_scan:
            cr = self.rules[i]
            if i not in dst and any(self._dst_matches(cr, a, n) for a in cr.dst):
                dst.add(i)
        return sorted(src), sorted(dst), sorted(ipsrc)

    def _dst_matches(self, cr: CRule, a: Alias, n: NodeView) -> bool:
        if not self.matches(a, n):
            return False
        if cr.rule.via:
            return any(t in n.tags for t in cr.rule.via) and a.kind in (
                "prefix",
                "host",
                "autogroup",
            )
        return True

    # ---- membership maintenance ---------------------------------------------------------

    def _add(self, n: NodeView) -> None:
        self.nodes[n.id] = n
        keys = self._node_keys(n)
        for key in keys:
            self.key_nodes.setdefault(key, set()).add(n.id)
        src, dst, ipsrc = self._roles(n, keys)
        self.src_of[n.id], self.dst_of[n.id], self.ipsrc_of[n.id] = src, dst, ipsrc
        for i in src:
            self.rules[i].src_nodes.add(n.id)
            if self.rules[i].self_dst:
                self.rules[i].src_ips = None
        for i in ipsrc:
            self.rules[i].ip_nodes.add(n.id)
            self.rules[i].src_ips = None
        for i in dst:
            self.rules[i].dst_nodes.add(n.id)
        if not n.tagged:
            self.user_nodes.setdefault(n.user_id, set()).add(n.id)
        if n.routes:
            self.routes[n.id] = n.routes
            self._wild = None

    def _drop(self, node_id: int) -> NodeView | None:
        n = self.nodes.pop(node_id, None)
        if n is None:
            return None
        for key in self._node_keys(n):
            self.key_nodes[key].discard(node_id)
        for i in self.src_of.pop(node_id):
            self.rules[i].src_nodes.discard(node_id)
        for i in self.ipsrc_of.pop(node_id):
            self.rules[i].ip_nodes.discard(node_id)
            self.rules[i].src_ips = None
        for i in self.dst_of.pop(node_id):
            self.rules[i].dst_nodes.discard(node_id)
        if not n.tagged:
            self.user_nodes.get(n.user_id, set()).discard(node_id)
        if self.routes.pop(node_id, None) is not None:
            self._wild = None
        self._filters.pop(node_id, None)
        return n

    def update(self, new: NodeView | None, node_id: int) -> set[int]:
        """Replace (or, with ``new`` None, remove) one node; return the other nodes whose
        filter changed (who sees the node itself follows from :meth:`can_see`)."""
        old = self.nodes.get(node_id)
        if old == new:
            return set()
        old_ip, old_src = (self.ipsrc_of[node_id], self.src_of[node_id]) if old else ([], [])
        self._drop(node_id)
        if new is not None:
            self._add(new)
        new_ip, new_src = (self.ipsrc_of[node_id], self.src_of[node_id]) if new else ([], [])
        ips_moved = old is None or new is None or old.addrs != new.addrs
        users = {n.user_id for n in (old, new) if n is not None and not n.tagged}
        for u in {n.user_id for n in (old, new) if n is not None}:
            self._self_ips.pop(u, None)
        affected: set[int] = set()
        for i in set(old_ip) | set(new_ip) | set(old_src) | set(new_src):
            cr = self.rules[i]
            if cr.self_dst:
                if ips_moved or len(users) > 1 or (i in old_src) != (i in new_src):
                    affected.update(m for u in users for m in self.user_nodes.get(u, ()))
            elif (i in old_ip or i in new_ip) and (ips_moved or (i in old_ip) != (i in new_ip)):
                affected |= cr.dst_nodes
        if (old.routes if old else ()) != (new.routes if new else ()):
            for cr in self.rules:  # `*` sources list every served route (§2.2)
                if cr.wildcard_src:
                    cr.src_ips = None
                    affected |= cr.dst_nodes
        affected.add(node_id)
        for a in affected:
            self._filters.pop(a, None)
        affected.discard(node_id)
        return affected

    # ---- answers ------------------------------------------------------------------------

    def can_see(self, viewer: int, peer: int) -> bool:
        return self._reaches(viewer, peer) or self._reaches(peer, viewer)

    def peer_ids(self, viewer: int) -> set[int]:
        """Every node ``can_see(viewer, ·)`` holds for, from the rules' member sets: the
        cost is the size of those sets (set unions), not one ``can_see`` per node."""
        n = self.nodes.get(viewer)
        if n is None:
            return set()
        out: set[int] = set()
        mine = self.user_nodes.get(n.user_id, set()) if not n.tagged else set()
        for i in self.src_of.get(viewer, ()):  # viewer -> them
            cr = self.rules[i]
            out |= (mine & cr.dst_nodes) if cr.self_dst else cr.dst_nodes
        for i in self.dst_of.get(viewer, ()):  # them -> viewer
            cr = self.rules[i]
            out |= (mine & cr.src_nodes) if cr.self_dst else cr.src_nodes
        out.discard(viewer)
        return out

    def reachable_routes(self, viewer: int, router: int) -> tuple[IPPrefix, ...]:
        """The router's served routes that ``viewer`` may reach (its AllowedIPs beyond the
        router's own addresses, §5.3): subnet routes a rule's destination overlaps (``*``
        covers all), and both /0s when the viewer is allowed autogroup:internet through it."""
        n = self.nodes.get(router)
        dst = self.dst_of.get(router)
        if n is None or not dst:
            return ()
        out: dict[IPPrefix, None] = {}
        for i in self.src_of.get(viewer, ()):
            if i not in dst or self.rules[i].self_dst:
                continue
            for a in self.rules[i].dst:
                if a.kind == "wildcard":  # ``*`` covers the internet too (§5.3)
                    out.update(dict.fromkeys(n.routes))
                    if n.exit:
                        out.update({_DEFAULT_V4: None, _DEFAULT_V6: None})
                elif a.kind in ("prefix", "host") and a.prefix is not None:
                    p = a.prefix
                    out.update(
                        (r, None) for r in n.routes if r.version == p.version and r.overlaps(p)
                    )
                elif a.kind == "autogroup" and a.name == "internet" and n.exit:
                    out.update({_DEFAULT_V4: None, _DEFAULT_V6: None})
        return tuple(out)

    def _reaches(self, a: int, b: int) -> bool:
        dst = self.dst_of.get(b)
        src = self.src_of.get(a)
        if not dst or not src:
            return False
        for i in set(src).intersection(dst):
            if not self.rules[i].self_dst:
                return True
            na, nb = self.nodes[a], self.nodes[b]
            if not na.tagged and na.user_id == nb.user_id:
                return True
        return False

    def signatures(self) -> dict[int, tuple[object, ...]]:
        """Per node: equal under two policies ⇒ equal filter and peers for that node."""
        # A source's peers depend on the rule's destinations; a destination's filter and
        # peers on the rule's sources (both, for autogroup:self rules).
        src_d, dst_d = [], []
        # SrcIPs follow from the literal sources (in body), the `*` expansion, and the
        # addresses of the nodes listed by address: stand for those by their ids plus one
        # hash of every node's addresses (conservative: an address change anywhere moves
        # every destination's signature), instead of building the strings.
        addrs = hash(frozenset((i, n.addrs) for i, n in self.nodes.items()))
        for cr in self.rules:
            r = cr.rule
            body = (r.src, cr.dst, r.protos, r.ports, r.caps, r.via, cr.self_dst)
            dsts, srcs = hash(frozenset(cr.dst_nodes)), hash(frozenset(cr.src_nodes))
            # 64-bit hashes stand for the values, so comparing signatures is cheap.
            src_d.append(hash((body, dsts, srcs if cr.self_dst else 0)))
            wild = self.wildcard_ips() if cr.wildcard_src else ()
            ips = hash((frozenset(cr.ip_nodes), wild, addrs))
            dst_d.append(hash((body, srcs, ips)))
        return {
            nid: (
                self.nodes[nid].user_id,
                tuple(src_d[i] for i in self.src_of[nid]),
                tuple(dst_d[i] for i in self.dst_of[nid]),
            )
            for nid in self.nodes
        }

    def wildcard_ips(self) -> tuple[str, ...]:
        if self._wild is None:
            routes = {host_str(r) for rs in self.routes.values() for r in rs}
            wild = cut_ranges(WILDCARD_SRC, self.shared_in) if self.shared_in else WILDCARD_SRC
            self._wild = wild + tuple(sort_ips(routes))
        return self._wild

    def _src_ips(self, cr: CRule, user: int | None = None) -> tuple[str, ...]:
        """SrcIPs of a rule; for an autogroup:self rule, those of ``user``'s devices."""
        if user is None and cr.src_ips is not None:
            return cr.src_ips
        if user is not None:
            cached = self._self_ips.setdefault(user, {})
            hit = cached.get(id(cr))
            if hit is not None:
                return hit
        lit: list[str] = []
        for a in cr.rule.src:
            if a.kind == "wildcard" and user is None:
                lit.extend(self.wildcard_ips())
            elif a.kind == "autogroup" and a.name == "danger-all":
                # every address, but a node shared into this tailnet (one way, TS-2024-005)
                lit.extend(cut_ranges(EVERY_ADDRESS, self.shared_in) if self.shared_in else ("*",))
            elif a.kind in ("prefix", "host") and a.prefix is not None:
                lit.append(host_str(a.prefix))
        if "*" in lit:
            out: tuple[str, ...] = ("*",)
        else:
            if user is None:
                members: Iterable[int] = cr.ip_nodes
            else:
                members = cr.src_nodes & self.user_nodes.get(user, set())
            # Node addresses carry their sort keys; only literals need parsing.
            keyed = [(_ip_key(s)[:2], s) for s in set(lit)]
            keyed.extend(k for m in members for k in self.nodes[m].keyed)
            keyed.sort()
            out = tuple(dict.fromkeys(s for _, s in keyed))
        if user is None:
            cr.src_ips = out
        else:
            self._self_ips[user][id(cr)] = out
        return out

    def _dst_entries(self, cr: CRule, n: NodeView) -> list[str]:
        out: list[str] = []
        for a in cr.dst:
            if cr.self_dst or (a.kind in ("user", "group", "tag") and self.matches(a, n)):
                out.extend(s for _, s in n.keyed)
            elif not self._dst_matches(cr, a, n):
                continue
            elif a.kind == "wildcard":
                out.append("*")
            elif a.kind in ("prefix", "host") and a.prefix is not None:
                out.append(host_str(a.prefix))
            elif a.kind == "autogroup" and a.name == "internet":
                out.extend(INTERNET)
            else:
                out.extend(str(x) for x in n.addrs)
        return list(dict.fromkeys(out))

    def filter_for(self, node_id: int, copy: bool = True) -> list[FilterRule]:
        """The node's filter: fresh objects, or (``copy`` False) the cached rules themselves,
        which the caller must not modify (copying is most of a warm full map's filter cost)."""
        cached = self._filters.get(node_id)
        if cached is None:
            cached = tuple(self._build(node_id))
            self._filters[node_id] = cached
        return [_copy_rule(r) for r in cached] if copy else list(cached)

    def _build(self, node_id: int) -> list[FilterRule]:
        n = self.nodes[node_id]
        merged: dict[tuple[tuple[str, ...], tuple[int, ...]], FilterRule] = {}
        out: list[FilterRule] = []
        for i in self.dst_of[node_id]:
            cr = self.rules[i]
            src = self._src_ips(cr, n.user_id if cr.self_dst else None)
            guests = self.guest_ips.get(node_id, ()) if names_shared(cr.rule) else ()
            if guests and src != ("*",):
                src = tuple(sort_ips((*src, *guests)))
            if not src:
                continue
            entries = self._dst_entries(cr, n)
            if not entries:
                continue
            if cr.rule.caps:
                entries = [
                    x for e in entries for x in ([str(a) for a in n.addrs] if e == "*" else [e])
                ]
                dsts = [
                    str(ipaddress.ip_network(e)) if "-" not in e else e
                    for e in dict.fromkeys(entries)
                ]
                capmap = {name: json.loads(vals) for name, vals in cr.rule.caps}
                out.append(
                    FilterRule(SrcIPs=list(src), CapGrant=[CapGrant(Dsts=dsts, CapMap=capmap)])
                )
                continue
            key = (src, cr.rule.protos)
            rule = merged.get(key)
            if rule is None:
                rule = merged[key] = FilterRule(SrcIPs=list(src), IPProto=list(cr.rule.protos))
                out.append(rule)
            rule.DstPorts.extend(
                NetPortRange(IP=e, Ports=PortRange(lo, hi))
                for e in entries
                for lo, hi in cr.rule.ports
            )
        guests = self.guest_ips.get(node_id, ())
        return confine_guests(out, guests, [str(a) for a in n.addrs]) if guests else out


def _copy_rule(r: FilterRule) -> FilterRule:
    return FilterRule(
        SrcIPs=list(r.SrcIPs),
        DstPorts=[
            NetPortRange(IP=d.IP, Ports=PortRange(d.Ports.First, d.Ports.Last)) for d in r.DstPorts
        ],
        IPProto=list(r.IPProto),
        CapGrant=[
            CapGrant(Dsts=list(c.Dsts), CapMap=json.loads(json.dumps(c.CapMap))) for c in r.CapGrant
        ],
    )
