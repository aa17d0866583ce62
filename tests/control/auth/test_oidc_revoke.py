"""Issue #12, OIDC hardening: a verified identity the allow-list no longer admits is refused
and loses its nodes (expired now, through the same path as ``nodes expire``), logged once."""

from __future__ import annotations

import asyncio
import logging
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from tests.control.auth.test_oidc_pages import (
    ALICE,
    Browser,
    Lab,
    confirm,
    login,
    mk,
    nk,
    serve_idp,
    serve_router,
)

from meshscale.control.auth.pages import OIDCPages
from meshscale.control.models import NodeChanged, RegisterMethod
from meshscale.control.oidcconfig import OIDCConfig
from meshscale.control.state import State
from meshscale.io.http import HTTPServer

ISS = "https://idp.example"


def _state(tmp_path: Path, now: list[datetime]) -> State:
    rng = random.Random(1)
    return State.open(tmp_path / "db.sqlite", None, clock=lambda: now[0],
                      rand=rng.randbytes, randbelow=rng.randrange)  # fmt: skip


def _enroll(state: State, user_id: Any, n: int) -> Any:
    reg = state.begin_registration(mk(n), nk(n), {"Hostname": f"h{n}"})
    return state.complete_registration(reg.id, user_id, method=RegisterMethod.OIDC)


def test_revoke_identity_expires_only_that_identitys_live_untagged_nodes(tmp_path: Path) -> None:
    now = [datetime(2026, 12, 3, 12, 0, tzinfo=UTC)]
    state = _state(tmp_path, now)
    try:
        alice = state.sign_in_user(ISS, "alice-1", name="alice")
        other_iss = state.sign_in_user("https://other.example", "alice-1", name="alice")
        bob = state.sign_in_user(ISS, "bob-1", name="bob")
        a1, a2, a3 = (_enroll(state, alice.id, n) for n in (1, 2, 3))
        state.set_expiry(a2.id, now[0] + timedelta(days=90))  # a future expiry is cut short
        state.set_tags(a3.id, ["tag:server"])  # tagged: the tag owns it, not alice
        o1 = _enroll(state, other_iss.id, 4)
        b1 = _enroll(state, bob.id, 5)
        sub = state.subscribe()
        sub.drain()

        assert state.revoke_identity(ISS, "alice-1") == (a1.id, a2.id)
        for nid in (a1.id, a2.id):
            assert state.get_node(nid).is_expired(now[0])
        changed = {c.node_id for c in sub.drain() if isinstance(c, NodeChanged)}
        assert changed == {a1.id, a2.id}  # what the map batcher acts on
        for nid in (a3.id, o1.id, b1.id):  # same subject at another issuer is another user
            assert state.get_node(nid).expiry is None
        # Once: nothing left to expire, no change published, the expiry is not moved.
        now[0] += timedelta(minutes=5)
        assert state.revoke_identity(ISS, "alice-1") == ()
        assert state.get_node(a1.id).expiry == now[0] - timedelta(minutes=5)
        assert sub.drain() == []
        assert state.revoke_identity(ISS, "nobody") == ()
        assert state.revoke_identity("", "") == ()
    finally:
        state.close()
    # Durable: a restart still sees the nodes expired.
    state = _state(tmp_path, now)
    try:
        assert state.get_node(a1.id).is_expired(now[0])
    finally:
        state.close()


async def _pages(state: State, issuer: str, **cfg: Any) -> tuple[HTTPServer, str]:
    router, http, base = await serve_router()
    oidc = OIDCConfig(issuer=issuer, client_id="meshscale", client_secret="s",
                      pkce_enabled=True, **cfg)  # fmt: skip
    OIDCPages(oidc, "s", base, state).mount(router)
    return http, base


@pytest.mark.parametrize(
    ("before", "after", "why"),
    [
        ({"allowed_groups": ("ops",)}, {"allowed_groups": ("admins",)}, "allowed group"),
        ({"allowed_users": ("alice@example.net",)}, {"allowed_users": ("bob@example.net",)},
         "user is not allowed"),
        ({"allowed_domains": ("example.net",)}, {"allowed_domains": ("other.org",)},
         "domain is not allowed"),
    ],
)  # fmt: skip
def test_refused_returning_user_loses_their_nodes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
    before: dict[str, Any], after: dict[str, Any], why: str,
) -> None:  # fmt: skip
    """Real HTTP, real signed ID tokens: alice enrolls while allowed; the control restarts
    with an allow-list that no longer admits her; her next sign-in is refused and her node
    is expired. A refusal before the token verifies touches nothing."""

    async def main() -> None:
        rng = random.Random(1)
        state = State.open(tmp_path / "db.sqlite", None, clock=lambda: datetime.now(UTC),
                           rand=rng.randbytes, randbelow=rng.randrange)  # fmt: skip
        idp, idp_http = await serve_idp()
        idp.user = ALICE
        servers = [idp_http]
        try:
            http, base = await _pages(state, idp.issuer, **before)
            servers.append(http)
            await asyncio.to_thread(enroll, Lab(state, idp, base))
            await http.close(grace=0.1)  # "restart" with the edited config
            servers.remove(http)
            http, base = await _pages(state, idp.issuer, **after)
            servers.append(http)
            await asyncio.to_thread(refused, Lab(state, idp, base))
        finally:
            for s in servers:
                await s.close(grace=0.1)
            state.close()

    def enroll(lab: Lab) -> None:
        b = Browser()
        reg_id, status, _, page = login(lab, 1, b)
        assert status == 200, page
        assert confirm(lab, reg_id, page, b)[0] == 200
        (node,) = lab.state.list_nodes()
        assert node.expiry is None

    def refused(lab: Lab) -> None:
        # A token that does not verify (wrong nonce) is refused and revokes nothing.
        lab.idp.nonce_override = "not-the-nonce"
        _, status, _, page = login(lab, 2)
        assert (status, "nonce" in page) == (403, True), page
        (node,) = lab.state.list_nodes()
        assert node.expiry is None
        lab.idp.nonce_override = None
        with caplog.at_level(logging.WARNING, "meshscale.control.oidc"):
            for n in (3, 4):  # twice: the second refusal has nothing left to expire
                _, status, _, page = login(lab, n)
                assert (status, why in page) == (403, True), page
        (node,) = lab.state.list_nodes()  # the refused logins registered nothing
        assert node.is_expired(datetime.now(UTC))
        logged = [r.getMessage() for r in caplog.records if "expired its" in r.getMessage()]
        assert len(logged) == 1 and "alice-1" in logged[0] and why in logged[0], logged

    asyncio.run(main())
