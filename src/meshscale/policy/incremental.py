"""A new policy (or user list) over the same nodes, derived from the previous Compiled.

A policy swap rarely changes much: a user joins a group, a rule's port moves, a rule is
added. :func:`derive` keeps every rule whose text is unchanged and whose aliases name no
user or group whose members moved (it copies that rule's member sets and cached SrcIPs),
resolves only the other rules against the nodes (by the node-key index, O(their members),
or one pass over the nodes for address and ``via`` rules), rebuilds the per-node rule
lists only for nodes those rules touch, and names the nodes whose filter or peer set may
have moved, from each changed rule's member sets (docs/protocol/policy.md §7 item 16).
The cost follows the size of the change, not nodes times rules; the previous Compiled is only
read (a refused policy leaves it in force untouched).

Kept rules are matched to the old ones in order (a node's filter follows rule order), by
the longest runs of equal rules, so editing, inserting, removing or moving one rule makes
only that rule new.
"""

from __future__ import annotations

import difflib

from meshscale.policy.compile import Compiled, CRule
from meshscale.policy.manager import PolicyUser
from meshscale.policy.model import Policy


def _key(cr: CRule) -> tuple[object, ...]:
    return (cr.rule, cr.dst, cr.self_dst)


def _moved(old: dict[str, frozenset[int]], new: dict[str, frozenset[int]]) -> set[str]:
    return {k for k in old.keys() | new.keys() if old.get(k) != new.get(k)}


def _names_moved(cr: CRule, users: set[str], groups: set[str]) -> bool:
    for a in (*cr.rule.src, *cr.dst):
        if (a.kind == "user" and a.name in users) or (a.kind == "group" and a.name in groups):
            return True
    return False


def members(c: Compiled, cr: CRule) -> tuple[set[int], set[int], set[int]]:
    """A rule's (source, destination, by-address source) nodes among ``c.nodes``: the
    same sets as adding every node one by one (:meth:`Compiled._roles`)."""
    src: set[int] = set()
    ips: set[int] = set()
    scan = False
    for a in cr.rule.src:
        keys = c._alias_keys(a)
        if keys is None:
            scan = True
            continue
        for key in keys:
            hit = c.key_nodes.get(key)
            if hit:
                src |= hit
                if key != "*":
                    ips |= hit
    if scan:
        src.update(i for i, n in c.nodes.items()
                   if i not in src and any(c.matches(a, n) for a in cr.rule.src))  # fmt: skip
    dst: set[int] = set()
    scan = bool(cr.rule.via)
    if not scan:
        for a in cr.dst:
            keys = c._alias_keys(a)
            if keys is None:
                scan = True
                continue
            for key in keys:
                dst |= c.key_nodes.get(key, set())
    if scan:
        dst.update(i for i, n in c.nodes.items()
                   if i not in dst and any(c._dst_matches(cr, a, n) for a in cr.dst))  # fmt: skip
    return src, dst, ips


def _match(old: list[CRule], new: list[CRule]) -> dict[int, int]:
    """New rule index → the old rule it keeps (same text), increasing in both: the
    longest matching runs (difflib), so moving one rule makes only that rule new."""
    sm = difflib.SequenceMatcher(None, [_key(r) for r in old], [_key(r) for r in new], False)
    return {b + k: a + k for a, b, size in sm.get_matching_blocks() for k in range(size)}


def _affected(c: Compiled, old: CRule | None, new: CRule | None) -> set[int]:
    """The nodes whose filter or peers may differ between one rule's two versions (None:
    the rule is added, or removed)."""
    if old is None or new is None:
        cr = old or new
        assert cr is not None
        return cr.src_nodes | cr.dst_nodes
    d_src = old.src_nodes ^ new.src_nodes
    d_dst = old.dst_nodes ^ new.dst_nodes
    d_ip = old.ip_nodes ^ new.ip_nodes
    if new.self_dst:  # each node's answers follow its own user's members of the rule
        moved = d_src | d_dst | d_ip
        out = set(moved)
        for u in {c.nodes[m].user_id for m in moved if not c.nodes[m].tagged}:
            out |= c.user_nodes.get(u, set())
        return out
    out = set()
    if d_src:  # sources joined or left: they, and every destination (new peers)
        out |= d_src | old.dst_nodes | new.dst_nodes
    if d_dst:
        out |= d_dst | old.src_nodes | new.src_nodes
    if d_ip:  # the destinations' SrcIPs moved
        out |= old.dst_nodes | new.dst_nodes
    return out


def derive(
    old: Compiled, policy: Policy, users: list[PolicyUser], strict: bool = True
) -> tuple[Compiled, set[int]]:
    """``policy`` over ``old``'s nodes and ``users``, equal to a fresh
    ``Compiled(policy, users, old.nodes)``, and the nodes whose filter or peer set may
    differ from ``old``'s (a superset, never a subset). Raises ValueError as Compiled
    does. ``old`` is not modified."""
    c = Compiled.blank(policy, users, strict)
    c.nodes = dict(old.nodes)
    c.user_nodes = {u: set(ns) for u, ns in old.user_nodes.items()}
    c.key_nodes = {k: set(ns) for k, ns in old.key_nodes.items()}
    c.routes = dict(old.routes)
    c.shared_in, c._wild = old.shared_in, old._wild
    users_moved = _moved(old.user_ids, c.user_ids)
    groups_moved = _moved(old.group_users, c.group_users)
    kept = _match(old.rules, c.rules)
    touched: set[int] = set()  # nodes whose rule lists may differ
    affected: set[int] = set()
    for i, cr in enumerate(c.rules):
        j = kept.get(i)
        prev = old.rules[j] if j is not None else None
        if prev is not None and not _names_moved(cr, users_moved, groups_moved):
            cr.src_nodes, cr.dst_nodes = set(prev.src_nodes), set(prev.dst_nodes)
            cr.ip_nodes, cr.src_ips = set(prev.ip_nodes), prev.src_ips
            continue
        cr.src_nodes, cr.dst_nodes, cr.ip_nodes = members(c, cr)
        if prev is None:
            touched |= cr.src_nodes | cr.dst_nodes | cr.ip_nodes
        else:  # a node's rule lists move only where its membership did
            touched |= prev.src_nodes ^ cr.src_nodes
            touched |= prev.dst_nodes ^ cr.dst_nodes
            touched |= prev.ip_nodes ^ cr.ip_nodes
        affected |= _affected(c, prev, cr)
    for j in set(range(len(old.rules))) - set(kept.values()):
        prev = old.rules[j]
        touched |= prev.src_nodes | prev.dst_nodes | prev.ip_nodes
        affected |= _affected(c, prev, None)
    n_rules = len(c.rules)
    if len(old.rules) == n_rules and all(kept.get(i) == i for i in range(n_rules)):
        redo = touched
        c.src_of = {n: old.src_of[n] for n in c.nodes}  # lists are replaced, never mutated
        c.dst_of = {n: old.dst_of[n] for n in c.nodes}
        c.ipsrc_of = {n: old.ipsrc_of[n] for n in c.nodes}
    else:
        redo = set(c.nodes)
    _rebuild_lists(c, redo)
    c._filters = {n: f for n, f in old._filters.items() if n not in affected}
    return c, affected


def _rebuild_lists(c: Compiled, redo: set[int]) -> None:
    """Each node in ``redo``: its src_of / dst_of / ipsrc_of from the rules' member sets
    (in rule order, as :meth:`Compiled._add` builds them)."""
    if not redo:
        return
    lists = (c.src_of, c.dst_of, c.ipsrc_of)
    for table in lists:
        for n in redo:
            table[n] = []
    whole = len(redo) == len(c.nodes)
    for i, cr in enumerate(c.rules):
        for table, ms in zip(lists, (cr.src_nodes, cr.dst_nodes, cr.ip_nodes), strict=True):
            for n in ms if whole else ms & redo:
                table[n].append(i)
