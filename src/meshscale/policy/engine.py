"""PolicyEngine: the policy-backed :class:`~meshscale.policy.manager.PolicyManager`.

Holds the policy text in force, the users and nodes, and one
:class:`~meshscale.policy.compile.Compiled`. ``set_policy`` validates, compiles against
the current tailnet and runs the policy's ``tests`` before swapping anything in, so a
refused policy leaves the old one in force (docs/protocol/policy.md §1.7). A policy swap
reports only nodes whose filter or peer set moved; a node write reports only the nodes
whose filter it changed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from meshscale.policy.checks import run_tests
from meshscale.policy.compile import Compiled, NodeView
from meshscale.policy.incremental import derive
from meshscale.policy.manager import (
    EVERYONE,
    NO_CHANGE,
    IPAddress,
    IPPrefix,
    PolicyChange,
    PolicyError,
    PolicyNode,
    PolicyUser,
)
from meshscale.policy.model import Alias, Policy
from meshscale.policy.parse import parse_policy
from meshscale.policy.sharing import Guest, selects_guest
from meshscale.tailcfg import FilterRule


def idp_group_warnings(
    policy: Policy, users: Iterable[PolicyUser], compiled: Compiled
) -> tuple[str, ...]:
    """A policy group that is also an IdP group (the policy's wins), and an IdP group the
    policy uses that no user has."""
    known = {g for u in users for g in u.groups}
    clash = [g for g in policy.groups if g[6:] in known]
    empty = [g for g in policy.idp_groups if not compiled.group_users.get(g)]
    return tuple(
        [f"{g} is defined in the policy and is also an IdP group: the policy wins" for g in clash]
        + [f'{g} is not defined in the policy and no signed-in user has IdP group "{g[6:]}"'
           for g in empty]
    )  # fmt: skip


class _UserSnap:
    __slots__ = ("email", "groups", "id", "name", "provider_id")

    def __init__(self, u: PolicyUser) -> None:
        self.id, self.name, self.email, self.provider_id = u.id, u.name, u.email, u.provider_id
        self.groups = tuple(u.groups)


def check_policy(
    text: str | bytes,
    users: Iterable[PolicyUser] = (),
    nodes: Iterable[PolicyNode] = (),
    *,
    idp_groups: bool = False,
) -> Policy:
    """Validate ``text`` (and its ``tests``, against ``nodes``) without applying it; the
    backend of ``policy check -f FILE``. Raises PolicyError. ``idp_groups``: see
    :class:`PolicyEngine`; its warnings are added to the policy's."""
    policy = parse_policy(text, idp_groups=idp_groups)
    ulist = list(users)
    try:
        compiled = Compiled(policy, ulist, [NodeView.of(n) for n in nodes])
    except ValueError as e:
        raise PolicyError(str(e)) from None
    run_tests(compiled)  # checks naming no device are skipped (see run_tests)
    if idp_groups:
        extra = idp_group_warnings(policy, ulist, compiled)
        policy = dataclasses.replace(policy, warnings=policy.warnings + extra)
    return policy


class PolicyEngine:
    """A :class:`PolicyManager` that enforces a Tailscale-format policy. ``text`` None (or
    never set) is "no policy": allow all, in the SaaS form (§2.1)."""

    def __init__(self, *, idp_groups: bool = False) -> None:
        # idp_groups (OIDC sign-in on): a group:NAME the policy does not define names the
        # users whose IdP groups contain NAME; a group the policy defines wins.
        self.idp_groups = idp_groups
        self.text: str | None = None
        self.policy = Policy()
        self._users: list[_UserSnap] = []
        self._compiled = Compiled(self.policy, [], [])
        self._test_warnings: tuple[str, ...] = ()
        self._guests: dict[int, Guest] = {}  # nodes of other tailnets shared some of ours
        self._shared_in: frozenset[IPAddress] = frozenset()

    @property
    def warnings(self) -> tuple[str, ...]:
        """What the policy in force asks for that is not enforced (e.g. ssh), and user
        references that name no known user (tolerated, as Headscale does)."""
        unknown = sorted(n for n, ids in self._compiled.user_ids.items() if not ids)
        users = tuple(f'user "{n}" matches no user' for n in unknown)
        return self.policy.warnings + users + self._group_warnings() + self._test_warnings

    def _group_warnings(self) -> tuple[str, ...]:
        if not self.idp_groups:
            return ()
        return idp_group_warnings(self.policy, self._users, self._compiled)

    # ---- inputs ---------------------------------------------------------------------------

    def set_policy(self, text: str | None) -> PolicyChange:
        policy = Policy() if text is None else parse_policy(text, idp_groups=self.idp_groups)
        compiled, changed = self._derive(policy)
        skipped = run_tests(compiled)
        change = self._swap(text, policy, compiled, changed)
        self._test_warnings = tuple(skipped)
        return change

    def set_users(self, users: Iterable[PolicyUser]) -> PolicyChange:
        snaps = [_UserSnap(u) for u in users]
        self._users = snaps
        # A user list can make an alias ambiguous; that alias then names no one rather
        # than failing a user write (set_policy refuses ambiguity).
        compiled, changed = self._derive(self.policy, strict=False)
        return self._swap(self.text, self.policy, compiled, changed)

    def set_nodes(self, nodes: Iterable[PolicyNode]) -> PolicyChange:
        compiled = self._compile(self.policy, [NodeView.of(n) for n in nodes], strict=False)
        return self._swap(self.text, self.policy, compiled)

    def update_node(self, node: PolicyNode) -> PolicyChange:
        return _change(self._compiled.update(NodeView.of(node), node.id))

    def set_guests(self, guests: Iterable[tuple[PolicyNode, Iterable[int]]]) -> PolicyChange:
        """Node sharing (docs/protocol/policy.md §6, :mod:`.sharing`): the nodes of other
        tailnets whose users were shared some of this tailnet's nodes, each with those
        nodes' ids. Reports the shared nodes and guests whose answers moved."""
        new: dict[int, Guest] = {}
        for node, shared in guests:
            ids = frozenset(int(i) for i in shared)
            if ids:
                new[node.id] = Guest(node.id, tuple(node.addresses()), ids)
        old, self._guests = self._guests, new
        moved = {g for g in old.keys() | new.keys() if old.get(g) != new.get(g)}
        touched = {s for g in moved for x in (old.get(g), new.get(g)) if x for s in x.shared}
        self._install_guests(self._compiled, touched)
        return _change(moved | touched)

    def set_shared_in(self, addrs: Iterable[IPAddress]) -> PolicyChange:
        """The addresses of nodes shared *into* this tailnet, which ``*`` as a source must
        no longer cover (§6 item 1). Every node whose filter holds ``*`` may change."""
        new = frozenset(addrs)
        if new == self._shared_in:
            return NO_CHANGE
        self._shared_in = new
        c = self._compiled
        c.shared_in, c._wild = new, None
        hit = {n for cr in c.rules if cr.wildcard_src for n in cr.dst_nodes}
        for cr in c.rules:
            if cr.wildcard_src:
                cr.src_ips = None
        for n in hit:
            c._filters.pop(n, None)
        return _change(hit)

    def guest_reach(self, guest_id: int, node_id: int) -> bool:
        """Whether guest ``guest_id`` (see set_guests) may reach this tailnet's
        ``node_id``: shared to its user, and some rule's sources select it with
        ``node_id`` among the destinations (§6 item 2)."""
        g = self._guests.get(guest_id)
        c = self._compiled
        if g is None or node_id not in g.shared or node_id not in c.nodes:
            return False
        for i in c.dst_of.get(node_id, ()):
            cr = c.rules[i]
            if not cr.self_dst and not cr.rule.caps and selects_guest(cr.rule, g):
                return True
        return False

    def guests_of(self, node_id: int) -> set[int]:
        """The guests that may reach ``node_id`` (they are in its netmap as sharees)."""
        return {g for g in self._guests if self.guest_reach(g, node_id)}

    def remove_node(self, node_id: int) -> PolicyChange:
        return _change(self._compiled.update(None, node_id))

    # ---- questions ------------------------------------------------------------------------

    def filter_for(self, node: PolicyNode) -> list[FilterRule]:
        """A new list of the node's rules. The rules are shared with the engine's cache
        (they are serialised per map, never edited): do not modify them; copy first."""
        c = self._compiled
        if node.id not in c.nodes:  # not fed yet: answer for it without keeping it
            c.update(NodeView.of(node), node.id)
            try:
                return c.filter_for(node.id)
            finally:
                c.update(None, node.id)
        return c.filter_for(node.id, copy=False)

    def can_see(self, viewer: PolicyNode, peer: PolicyNode) -> bool:
        return self._compiled.can_see(viewer.id, peer.id)

    def peer_ids(self, viewer: PolicyNode) -> set[int]:
        """The ids of every node ``can_see(viewer, ·)`` holds for, computed at once (what a
        full map needs: far cheaper than asking ``can_see`` per node)."""
        if viewer.id not in self._compiled.nodes:
            return set()
        return self._compiled.peer_ids(viewer.id)

    def reachable_routes(self, viewer: PolicyNode, router: PolicyNode) -> tuple[IPPrefix, ...]:
        """Which of ``router``'s approved routes belong in ``viewer``'s AllowedIPs for it
        (before HA primary selection, which the caller applies)."""
        return self._compiled.reachable_routes(viewer.id, router.id)

    def cap_map_for(self, node: PolicyNode) -> dict[str, None]:
        """The ``nodeAttrs`` attributes that target ``node``: keys of its self ``CapMap``,
        each with a null value (docs/protocol/policy.md §1.7)."""
        return _caps(self.policy, self._compiled, NodeView.of(node))

    def may_tag(self, node: PolicyNode, tag: str) -> bool:
        """Whether the node's user (or one of its tags, transitively) owns ``tag`` in
        tagOwners. Without a policy every tag is allowed."""
        if self.text is None:
            return True
        owners = self.policy.tag_owners
        seen: set[str] = set()
        todo = [tag]
        view = NodeView.of(node)
        while todo:
            t = todo.pop()
            if t in seen or t not in owners:
                continue
            seen.add(t)
            for a in owners[t]:
                if a.kind == "tag":
                    if a.name in view.tags:
                        return True
                    todo.append(a.name)
                elif self._owner_matches(a, view, untagged_only=True):
                    return True
        return False

    def knows_tag(self, tag: str) -> bool:
        """Whether ``tag`` is defined in tagOwners (any tag without a policy): what an
        admin's tagging is checked against."""
        return self.text is None or tag in self.policy.tag_owners

    def may_approve_route(self, node: PolicyNode, route: IPPrefix) -> bool:
        """Whether autoApprovers approve ``route`` for ``node``. A /0 is approved only by
        ``exitNode``, never by ``routes`` (§1.7)."""
        view = NodeView.of(node)
        if route.prefixlen == 0:
            return any(self._owner_matches(a, view) for a in self.policy.exit_approvers)
        for prefix, approvers in self.policy.route_approvers:
            inside = prefix.version == route.version and route.subnet_of(prefix)  # type: ignore[arg-type]
            if inside and any(self._owner_matches(a, view) for a in approvers):
                return True
        return False

    # ---- internals ------------------------------------------------------------------------

    def _owner_matches(self, a: Alias, view: NodeView, untagged_only: bool = False) -> bool:
        if untagged_only and view.tagged:
            return False
        return self._compiled.matches(a, view)

    def _compile(self, policy: Policy, nodes: Iterable[NodeView], strict: bool = True) -> Compiled:
        try:
            c = Compiled(policy, self._users, list(nodes), strict)
        except ValueError as e:
            raise PolicyError(str(e)) from None
        c.shared_in = self._shared_in
        self._install_guests(c, {s for g in self._guests.values() for s in g.shared})
        return c

    def _derive(self, policy: Policy, strict: bool = True) -> tuple[Compiled, set[int]]:
        """``policy`` over today's nodes and users, derived from the Compiled in force
        (:mod:`.incremental`), and the nodes whose filter or peers may have moved."""
        try:
            c, changed = derive(self._compiled, policy, list(self._users), strict)
        except ValueError as e:
            raise PolicyError(str(e)) from None
        self._install_guests(c, {s for g in self._guests.values() for s in g.shared})
        return c, changed

    def _install_guests(self, c: Compiled, nodes: Iterable[int]) -> None:
        """Set the guest SrcIPs (autogroup:shared) of ``nodes`` in ``c``; drop their
        cached filters."""
        for nid in nodes:
            ips = sorted({str(a) for g in self._guests.values() if nid in g.shared
                          for a in g.addrs})  # fmt: skip
            if ips:
                c.guest_ips[nid] = tuple(ips)
            else:
                c.guest_ips.pop(nid, None)
            c._filters.pop(nid, None)

    def _swap(
        self, text: str | None, policy: Policy, compiled: Compiled, moved: set[int] | None = None
    ) -> PolicyChange:
        """Put ``compiled`` in force; ``moved``: the nodes whose filter or peers may have
        moved, if known (else found by comparing every node's signature)."""
        if moved is None:
            old, new = self._compiled.signatures(), compiled.signatures()
            changed = {n for n in old.keys() | new.keys() if old.get(n) != new.get(n)}
        else:
            changed = set(moved)
        if self.policy.node_attrs or policy.node_attrs:  # a node's self CapMap moved
            for nid, view in compiled.nodes.items():
                prev = self._compiled.nodes.get(nid)
                if prev is None or _caps(self.policy, self._compiled, prev) != _caps(
                    policy, compiled, view
                ):
                    changed.add(nid)
        self.text, self.policy, self._compiled = text, policy, compiled
        if changed and len(changed) == len(compiled.nodes) and len(compiled.nodes) > 1:
            return EVERYONE
        if self._guests:  # who a guest reaches is not in the signatures
            changed |= set(self._guests)
            changed |= {s for g in self._guests.values() for s in g.shared}
        return PolicyChange(nodes=frozenset(changed)) if changed else NO_CHANGE


def _caps(policy: Policy, compiled: Compiled, view: NodeView) -> dict[str, None]:
    out: dict[str, None] = {}
    for na in policy.node_attrs:
        if any(compiled.matches(a, view) for a in na.target):
            out.update(dict.fromkeys(na.attrs))
    return out


def _change(nodes: set[int]) -> PolicyChange:
    return PolicyChange(nodes=frozenset(nodes)) if nodes else NO_CHANGE
