"""The validated policy: aliases, rules and the other sections, as plain frozen values.

:mod:`meshscale.policy.parse` builds a :class:`Policy` from HuJSON; :mod:`.compile` turns
it into per-node filters. ACL rules and grants both become :class:`Rule` (one per ACL dst
entry, one per protocol group of a grant's ``ip``), as Headscale's ``aclToGrants`` does
(docs/protocol/policy.md §1.5).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Final

IPPrefix = ipaddress.IPv4Network | ipaddress.IPv6Network

# Autogroup names and where they may appear (docs/protocol/policy.md §1.4).
AUTOGROUPS: Final = frozenset(
    {"member", "tagged", "self", "internet", "shared", "danger-all", "nonroot"}
)


@dataclass(frozen=True, slots=True)
class Alias:
    """One target: ``kind`` is prefix, wildcard, user, group, tag, autogroup or host.

    ``name`` is the text as written (a host's name, ``group:dev``); ``prefix`` holds the
    resolved prefix of ``prefix`` and ``host`` aliases. ``at`` is its ``line:column``."""

    kind: str
    name: str
    prefix: IPPrefix | None = None
    at: str = field(default="", compare=False)

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True, slots=True)
class Rule:
    """Sources may open flows to the destinations on ``ports`` with ``protos``.

    ``protos`` empty = the client default (TCP, UDP, ICMP); ``ports`` are inclusive
    (first, last) pairs. An app grant has ``caps`` (capability → JSON values) and no ports.
    ``via`` restricts which routers install it."""

    src: tuple[Alias, ...]
    dst: tuple[Alias, ...]
    protos: tuple[int, ...] = ()
    ports: tuple[tuple[int, int], ...] = ((0, 65535),)
    caps: tuple[tuple[str, str], ...] = ()  # (name, JSON text of its values)
    via: tuple[str, ...] = ()
    at: str = field(default="", compare=False)


@dataclass(frozen=True, slots=True)
class PolicyTest:
    """A ``tests`` entry: ``src`` must reach each of ``accept`` and none of ``deny``."""

    src: Alias
    proto: int  # 6 when empty: tests probe TCP
    accept: tuple[tuple[Alias, int], ...]
    deny: tuple[tuple[Alias, int], ...]
    at: str = field(default="", compare=False)


@dataclass(frozen=True, slots=True)
class SSHRule:
    """A validated ``ssh`` entry. Stored only: Tailscale SSH is not served yet."""

    action: str
    src: tuple[Alias, ...]
    dst: tuple[Alias, ...]
    users: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class NodeAttr:
    target: tuple[Alias, ...]
    attrs: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Policy:
    """A whole validated policy. ``rules`` is None when the text has neither ``acls`` nor
    ``grants`` (which means allow-all, docs/protocol/policy.md §2.1)."""

    rules: tuple[Rule, ...] | None = None
    groups: dict[str, tuple[str, ...]] = field(default_factory=dict)
    tag_owners: dict[str, tuple[Alias, ...]] = field(default_factory=dict)
    hosts: dict[str, IPPrefix] = field(default_factory=dict)
    route_approvers: tuple[tuple[IPPrefix, tuple[Alias, ...]], ...] = ()
    exit_approvers: tuple[Alias, ...] = ()
    node_attrs: tuple[NodeAttr, ...] = ()
    tests: tuple[PolicyTest, ...] = ()
    ssh: tuple[SSHRule, ...] = ()
    randomize_client_port: bool = False
    warnings: tuple[str, ...] = ()
    # `group:NAME`s used but not defined here, parsed with idp_groups: the users whose IdP
    # groups (PolicyUser.groups) contain NAME are their members.
    idp_groups: tuple[str, ...] = ()
