"""IdP groups in the policy (hs#2366): with ``idp_groups`` on (OIDC sign-in configured), a
``group:NAME`` the policy does not define names the users whose IdP groups contain NAME,
refreshed whenever the users are fed again (each sign-in); a group the policy defines wins,
with a warning naming the clash."""

from __future__ import annotations

import dataclasses

import pytest
from tests.policy.tailnet import node

from meshscale.control.models import User, UserID
from meshscale.policy import PolicyEngine, PolicyError, check_policy

ALICE = User(UserID(1), "alice", email="alice@example.net", provider_id="http://idp/alice",
             groups=("ops", "/eng/db"))  # fmt: skip
BOB = User(UserID(2), "bob", email="bob@example.net", provider_id="http://idp/bob",
           groups=("dev",))  # fmt: skip
CAROL = User(UserID(3), "carol", email="carol@example.net")  # local user, no IdP groups

POLICY = """{
  "tagOwners": {"tag:db": ["group:ops"]},
  "acls": [
    {"action": "accept", "src": ["group:ops"], "dst": ["tag:db:5432"]},
    {"action": "accept", "src": ["group:/eng/db"], "dst": ["tag:db:22"]},
  ],
}"""


def engine(*users: User) -> PolicyEngine:
    e = PolicyEngine(idp_groups=True)
    e.set_users(users)
    return e


def srcs(e: PolicyEngine, db_port: int) -> set[str]:
    db = node(9, CAROL, tags=("tag:db",))
    out: set[str] = set()
    for r in e.filter_for(db):
        if any(p.Ports.First == db_port for p in r.DstPorts):
            out |= set(r.SrcIPs)
    return out


def test_without_oidc_an_undefined_group_is_still_refused() -> None:
    with pytest.raises(PolicyError, match='undefined group "group:ops"'):
        PolicyEngine().set_policy(POLICY)
    with pytest.raises(PolicyError, match="undefined group"):
        check_policy(POLICY)
    assert check_policy(POLICY, idp_groups=True).idp_groups == ("group:ops", "group:/eng/db")


def test_idp_group_grants_access_and_tag_ownership() -> None:
    e = engine(ALICE, BOB, CAROL)
    e.set_nodes([node(1, ALICE), node(2, BOB), node(3, CAROL), node(9, CAROL, tags=("tag:db",))])
    e.set_policy(POLICY)
    assert srcs(e, 5432) == {"100.64.0.1", "fd7a:115c:a1e0::1"}  # alice: ops
    assert srcs(e, 22) == {"100.64.0.1", "fd7a:115c:a1e0::1"}  # a Keycloak-style path
    assert e.may_tag(node(1, ALICE), "tag:db") and not e.may_tag(node(2, BOB), "tag:db")
    assert e.warnings == ()


def test_groups_refresh_when_users_are_fed_again() -> None:
    e = engine(ALICE, BOB)
    bob = node(2, BOB)
    e.set_nodes([node(1, ALICE), bob, node(9, CAROL, tags=("tag:db",))])
    e.set_policy(POLICY)
    assert "100.64.0.2" not in srcs(e, 5432)
    # bob signs in again and the IdP now says he is in ops; alice left every group.
    change = e.set_users([dataclasses.replace(ALICE, groups=()),
                          dataclasses.replace(BOB, groups=("ops",))])  # fmt: skip
    assert 9 in change.nodes or change.everyone
    assert srcs(e, 5432) == {"100.64.0.2", "fd7a:115c:a1e0::2"}
    assert 'no signed-in user has IdP group "/eng/db"' in " ".join(e.warnings)


def test_a_group_the_policy_defines_wins_with_a_warning() -> None:
    text = POLICY.replace('"tagOwners"', '"groups": {"group:ops": ["carol@example.net"]},\n'
                          '  "tagOwners"')  # fmt: skip
    e = engine(ALICE, CAROL)
    e.set_nodes([node(1, ALICE), node(3, CAROL), node(9, CAROL, tags=("tag:db",))])
    e.set_policy(text)
    assert srcs(e, 5432) == {"100.64.0.3", "fd7a:115c:a1e0::3"}  # carol, not alice
    assert e.warnings == (
        "group:ops is defined in the policy and is also an IdP group: the policy wins",
    )
    # `policy check` (State.check_policy, the console editor) shows the same warning.
    assert check_policy(text, [ALICE, CAROL], idp_groups=True).warnings == e.warnings


def test_tagged_nodes_of_a_group_member_are_not_the_group() -> None:
    e = engine(ALICE)
    e.set_nodes([node(1, ALICE, tags=("tag:db",)), node(9, CAROL, tags=("tag:db",))])
    e.set_policy(POLICY)
    assert srcs(e, 5432) == set()
