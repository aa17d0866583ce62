"""Console sign-in through OIDC over real HTTP: the test IdP of tests/control/auth (real JWS
tokens), our console, and a urllib cookie-jar browser. Only configured admins get a session."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.control.auth.test_oidc_pages import Browser, LabIdP, serve_idp, serve_router

from meshscale.control.api import API
from meshscale.control.auth.pages import OIDCPages
from meshscale.control.console import ConsoleSettings, build
from meshscale.control.console.oidc import ConsoleOIDC
from meshscale.control.oidcconfig import OIDCConfig
from meshscale.control.state import State

ALICE = {"sub": "alice-1", "email": "alice@example.net", "email_verified": True, "groups": []}
BOB = {"sub": "bob-1", "email": "bob@example.net", "email_verified": True, "groups": ["ops"]}
EVE = {"sub": "eve-1", "email": "eve@example.net", "email_verified": False, "groups": ["dev"]}


def run(tmp_path: Path, body: Any) -> None:
    async def main() -> None:
        rng = random.Random(1)
        state = State.open(tmp_path / "db.sqlite", clock=lambda: datetime.now(UTC),
                           rand=rng.randbytes)  # fmt: skip
        idp, idp_http = await serve_idp()
        router, http, base = await serve_router()
        cfg = OIDCConfig(issuer=idp.issuer, client_id="meshscale", client_secret="s",
                         pkce_enabled=True)  # fmt: skip
        oidc = ConsoleOIDC(OIDCPages(cfg, "s", base, state), base,
                           ("Alice@example.net", "eve@example.net"), ("ops",))  # fmt: skip
        build(state, API(state), ConsoleSettings(server_url=base), oidc=oidc).mount(router)
        try:
            await asyncio.to_thread(body, idp, base, state)
        finally:
            await http.close(grace=0.1)
            await idp_http.close(grace=0.1)
            state.close()

    asyncio.run(main())


def test_admins_sign_in_others_are_refused(tmp_path: Path) -> None:
    def body(idp: LabIdP, base: str, state: State) -> None:
        b = Browser()
        status, _, page = b.open(f"{base}/admin/login")
        assert status == 200 and "/admin/oidc/start" in page
        for user, want in ((ALICE, 200), (BOB, 200), (EVE, 403)):
            idp.user = user
            b = Browser()
            status, url, page = b.open(f"{base}/admin/oidc/start")
            assert status == want, (user, page)
            if want == 200:
                assert url == f"{base}/admin/machines"  # no ?code= left in the address
                assert user["email"] in page  # the actor shown in the header
            else:
                assert "not a console admin" in page
        # A replayed callback (state consumed) is refused.
        idp.user = ALICE
        b = Browser()
        b.open(f"{base}/admin/login")
        status, _, _ = b.open(f"{base}/admin/oidc/callback?code=x&state=abcdefgh")
        assert status in (400, 403, 410)

    run(tmp_path, body)


def test_config_keys(tmp_path: Path) -> None:
    from meshscale.control.config import config_from_mapping

    cfg = config_from_mapping(
        {"console": {"admin_users": ["a@x.org"], "admin_groups": ["ops"]}}, tmp_path
    )
    assert cfg.console_admin_users == ("a@x.org",) and cfg.console_admin_groups == ("ops",)
    assert not any("console" in w for w in cfg.warnings)


def test_settings_page_shows_config_without_secrets(tmp_path: Path) -> None:
    from tests.control.console.browser import Browser as ConsoleBrowser

    from meshscale.control.config import config_from_mapping
    from meshscale.control.console import console_for
    from meshscale.tailcfg import DNSConfig

    cfg = config_from_mapping({
        "server_url": "https://control.test",
        "oidc": {"issuer": "https://idp.test", "client_id": "ms", "client_secret": "sekrit-123"},
        "console": {"admin_groups": ["ops"]},
    }, tmp_path)  # fmt: skip
    state = State.open(":memory:")
    console = console_for(cfg, state, API(state), DNSConfig())
    b = ConsoleBrowser(console)
    assert b.sign_in(state.create_api_key().secret).status == 303
    page = b.get("/admin/settings").text
    assert "https://idp.test" in page and "ops" in page and "policy.mode" in page
    assert "sekrit" not in page
    assert "/admin/oidc/start" in b.get("/admin/login").text  # OIDC sign-in offered
