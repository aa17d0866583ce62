"""OIDC users in State: keyed by (issuer, subject), never by email; survive a reopen (SQLite)."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from pathlib import Path

import pytest

from meshscale.control.models import InvalidArgument
from meshscale.control.state import State
from meshscale.key import MachinePublic, NodePublic
from meshscale.policy import PolicyEngine


def open_state(path: Path) -> State:
    rng = random.Random(1)
    return State.open(
        path,
        None,
        clock=lambda: datetime(2026, 3, 1, tzinfo=UTC),
        rand=rng.randbytes,
        randbelow=rng.randrange,
    )


def test_same_email_from_two_providers_is_two_users(tmp_path: Path) -> None:
    state = open_state(tmp_path / "db.sqlite")
    a = state.sign_in_user("https://idp-a", "1", name="alice", email="alice@example.net")
    b = state.sign_in_user("https://idp-b", "1", name="alice", email="alice@example.net")
    local = state.create_user("alice")
    assert len({a.id, b.id, local.id}) == 3


def test_sign_in_again_refreshes_profile_and_groups(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    state = open_state(path)
    a = state.sign_in_user("https://idp", "s", name="alice", email="a@x.net", groups=("ops",))
    again = state.sign_in_user(
        "https://idp",
        "s",
        name="other",
        email="new@x.net",
        display_name="Alice",
        groups=("dev", "ops"),
    )
    assert again.id == a.id
    assert (again.name, again.email, again.display_name) == ("alice", "new@x.net", "Alice")
    assert again.groups == ("dev", "ops")
    state.close()
    reopened = open_state(path)
    (user,) = reopened.list_users()
    assert (user.oidc_issuer, user.oidc_subject, user.groups) == (
        "https://idp",
        "s",
        ("dev", "ops"),
    )
    same = reopened.sign_in_user("https://idp", "s", name="x", email="new@x.net")
    assert same.id == user.id


def test_subject_is_verbatim_not_normalized(tmp_path: Path) -> None:
    state = open_state(tmp_path / "db.sqlite")
    a = state.sign_in_user("https://idp", "a", name="u1")
    b = state.sign_in_user("https://idp", "A", name="u2")
    assert a.id != b.id


def test_sign_in_needs_issuer_subject_and_a_valid_name(tmp_path: Path) -> None:
    state = open_state(tmp_path / "db.sqlite")
    with pytest.raises(InvalidArgument):
        state.sign_in_user("", "s", name="u")
    with pytest.raises(InvalidArgument):
        state.sign_in_user("https://idp", "", name="u")
    with pytest.raises(InvalidArgument):
        state.sign_in_user("https://idp", "s", name="bad name!")


def test_idp_groups_in_the_policy_follow_each_sign_in(tmp_path: Path) -> None:
    """With OIDC on (PolicyEngine(idp_groups=True), as the server builds it), a policy
    group:ops it does not define is the users whose last sign-in said "ops"."""
    rng = random.Random(1)
    state = State.open(
        tmp_path / "db.sqlite",
        None,
        rand=rng.randbytes,
        randbelow=rng.randrange,
        policy=PolicyEngine(idp_groups=True),
    )
    carol = state.create_user("carol", email="carol@example.net")
    alice = state.sign_in_user("https://idp", "a1", name="alice", groups=("guests",))
    nodes = []
    for i, user in enumerate((carol, alice), start=1):
        secret = state.create_preauth_key(user.id).secret
        mk, nk = MachinePublic(bytes([i]) * 32), NodePublic(bytes([i + 10]) * 32)
        nodes.append(state.register_with_preauth_key(secret, mk, nk))
    db, laptop = nodes
    policy = '{"acls": [{"action": "accept", "src": ["group:ops"], "dst": ["carol@:*"]}]}'
    assert state.check_policy(policy) == [
        'group:ops is not defined in the policy and no signed-in user has IdP group "ops"'
    ]
    state.set_policy(policy)

    def sources() -> set[str]:
        return {ip for rule in state.packet_filter(db.id) for ip in rule.SrcIPs}

    assert str(laptop.ipv4) not in sources()
    state.sign_in_user("https://idp", "a1", name="alice", groups=("ops",))  # signs in again
    assert str(laptop.ipv4) in sources()
    state.close()
