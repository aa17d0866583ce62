"""Issue #12 findings 4 and 2 on /verify: hostile bodies get a 400, expired keys are refused by both
/verify and the embedded relay's admission rule (``admits``)."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from meshscale.control.verify import admits

from .state.test_state import FakeClock, make_state, mk, nk
from .test_verify import ask


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 3000,
        b'{"NodePublic": 5}',
        b"[1]",
        b'"x"',
        b"null",
        b'{"NodePublic": null}',
        b"{" * 3000,
        b'{"NodePublic": ["nodekey:00"]}',
    ],
)
def test_issue12_verify_hostile_body_is_400(body: bytes) -> None:
    status, _ = ask(make_state(), body)
    assert status == 400


def test_issue12_embedded_derp_rule_refuses_expired_node() -> None:
    clock = FakeClock()
    state = make_state(clock=clock)
    user = state.create_user("alice")
    node = state.register_node(mk(1), nk(1), user.id)
    assert admits(state, nk(1))
    assert not admits(state, nk(2))
    state.expire_node(node.id, clock() - timedelta(seconds=1))
    assert not admits(state, nk(1))
    assert ask(state, json.dumps({"NodePublic": nk(1).text()}).encode()) == (200, {"Allow": False})
