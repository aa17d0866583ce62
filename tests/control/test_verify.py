"""POST /verify answers a relay's admission question from the node table."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshscale.control.state import State
from meshscale.control.verify import verify_handler
from meshscale.io.http import Headers, Request

from .state.test_state import FakeClock, make_state, mk, nk


def ask(state: State, body: bytes) -> tuple[int, object]:
    req = Request("POST", "/verify", "", {}, Headers([]), body)
    resp = asyncio.run(verify_handler(state)(req))
    assert isinstance(resp.body, bytes)
    return resp.status, json.loads(resp.body) if resp.status == 200 else resp.body


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def test_known_node_allowed_unknown_and_expired_refused(clock: FakeClock) -> None:
    state = make_state(clock=clock)
    user = state.create_user("alice")
    node = state.register_node(mk(1), nk(1), user.id)
    assert ask(state, json.dumps({"NodePublic": nk(1).text(), "Source": "1.2.3.4"}).encode()) == (
        200,
        {"Allow": True},
    )
    assert ask(state, json.dumps({"NodePublic": nk(2).text()}).encode()) == (200, {"Allow": False})
    state.expire_node(node.id, clock() - timedelta(seconds=1))
    assert ask(state, json.dumps({"NodePublic": nk(1).text()}).encode()) == (200, {"Allow": False})


@given(st.binary(max_size=300))
def test_garbage_gets_400_never_a_crash(body: bytes) -> None:
    state = make_state()
    status, _ = ask(state, body)
    assert status in (200, 400)
