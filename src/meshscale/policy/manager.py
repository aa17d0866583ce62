"""The policy seam: the questions the control server asks about access, and their shape.

The control server's State owns one :class:`PolicyManager`. It feeds the manager the
tailnet as it changes (the policy text, the users, every node write) and asks it four
questions, each about one node::

    filter_for(node)                the inbound packet filter ``node`` enforces
                                    (docs/protocol/policy.md §3)
    can_see(viewer, peer)           whether ``peer`` belongs in ``viewer``'s netmap
    may_tag(node, tag)              whether ``node`` may request ``tag`` (tagOwners,
                                    docs/protocol/policy.md §2.5)
    knows_tag(tag)                  whether an admin may give ``tag`` (it is defined)
    may_approve_route(node, route)  whether ``route`` may be approved for ``node``
                                    (docs/protocol/policy.md §5)

Every feed returns a :class:`PolicyChange`: the nodes whose answers the input altered,
other than through the changed node's own appearance, change or removal (the server tells
every peer about those anyway). The server then rebuilds only those nodes' maps, so an
endpoint change recompiles nothing and a new device of one user touches only what its
rules reach (docs/protocol/policy.md §7 item 16).

A manager is a sans-IO core: it never reads the clock or does I/O, and State calls it
under its lock, inside the write it is committing. ``set_policy`` must be atomic: it
either raises :class:`PolicyError` and keeps the old policy, or takes the new one.

The manager reads nodes and users through the structural :class:`PolicyNode` and
:class:`PolicyUser` protocols (the control server's ``Node`` and ``User`` satisfy them), so
this package depends on nothing of the server's.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from meshscale.tailcfg import FilterRule

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPPrefix = ipaddress.IPv4Network | ipaddress.IPv6Network


class PolicyError(ValueError):
    """The policy text cannot be used; the message is safe to show to an admin."""


class PolicyNode(Protocol):
    """What a policy reads of a node."""

    @property
    def id(self) -> int: ...
    @property
    def user_id(self) -> int: ...
    @property
    def tags(self) -> tuple[str, ...]: ...
    @property
    def approved_routes(self) -> tuple[IPPrefix, ...]: ...
    def addresses(self) -> tuple[IPAddress, ...]: ...
    def announced_routes(self) -> tuple[IPPrefix, ...]: ...


class PolicyUser(Protocol):
    """What a policy reads of a user (aliases match provider id, then email or name)."""

    @property
    def id(self) -> int: ...
    @property
    def name(self) -> str: ...
    @property
    def email(self) -> str: ...
    @property
    def provider_id(self) -> str | None: ...
    @property
    def groups(self) -> tuple[str, ...]:
        """The identity provider's groups at the last sign-in (empty for local users)."""
        ...


@dataclass(frozen=True, slots=True)
class PolicyChange:
    """Whose answers an input altered: ``everyone``, or the node ids in ``nodes``."""

    everyone: bool = False
    nodes: frozenset[int] = frozenset()

    def __bool__(self) -> bool:
        return self.everyone or bool(self.nodes)

    def __or__(self, other: PolicyChange) -> PolicyChange:
        if self.everyone or other.everyone:
            return EVERYONE
        if not other.nodes:
            return self
        return PolicyChange(nodes=self.nodes | other.nodes)


NO_CHANGE: Final = PolicyChange()
EVERYONE: Final = PolicyChange(everyone=True)


class PolicyManager(Protocol):
    """Answers access questions per node; fed the tailnet as it changes (see the module
    docstring)."""

    # ---- inputs: each returns whose answers changed -------------------------------------

    def set_policy(self, text: str | None) -> PolicyChange:
        """Take a new policy text (None: no policy). Raises PolicyError and keeps the old
        policy if ``text`` cannot be used."""
        ...

    def set_users(self, users: Iterable[PolicyUser]) -> PolicyChange:
        """Replace the user list."""
        ...

    def set_nodes(self, nodes: Iterable[PolicyNode]) -> PolicyChange:
        """Replace the node list (at start, and after State reloads its snapshot)."""
        ...

    def update_node(self, node: PolicyNode) -> PolicyChange:
        """A node was added or written (the new version)."""
        ...

    def remove_node(self, node_id: int) -> PolicyChange:
        """A node was deleted."""
        ...

    # ---- questions ----------------------------------------------------------------------

    def filter_for(self, node: PolicyNode) -> Sequence[FilterRule]:
        """The inbound packet filter for ``node``: the rules whose destinations touch it.
        The rules may be shared with the manager's cache: callers must not modify them."""
        ...

    def can_see(self, viewer: PolicyNode, peer: PolicyNode) -> bool:
        """Whether ``peer`` is in ``viewer``'s netmap (``viewer`` is never ``peer``)."""
        ...

    def may_tag(self, node: PolicyNode, tag: str) -> bool:
        """Whether ``node`` may take ``tag`` itself (``Hostinfo.RequestTags``: tagOwners
        must name its user, or one of its tags)."""
        ...

    def knows_tag(self, tag: str) -> bool:
        """Whether an admin may give ``tag`` to a node (``nodes tag``, a tagged pre-auth
        key): the policy defines it in tagOwners (any tag without a policy)."""
        ...

    def may_approve_route(self, node: PolicyNode, route: IPPrefix) -> bool:
        """Whether ``route`` may be approved for ``node`` (asked before it is approved)."""
        ...

    # ---- node sharing (docs/protocol/policy.md §6; see meshscale.policy.sharing) ---------

    def set_guests(self, guests: Iterable[tuple[PolicyNode, Iterable[int]]]) -> PolicyChange:
        """Nodes of other tailnets, each with the ids of this tailnet's nodes shared to
        its user."""
        ...

    def set_shared_in(self, addrs: Iterable[IPAddress]) -> PolicyChange:
        """Addresses of nodes shared into this tailnet (``*`` must not cover them)."""
        ...

    def guest_reach(self, guest_id: int, node_id: int) -> bool:
        """Whether guest ``guest_id`` may reach this tailnet's ``node_id``."""
        ...
