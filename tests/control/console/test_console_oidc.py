"""Console sign-in through OIDC over real HTTP: the test IdP of tests/control/auth (real JWS
tokens), our console, and a urllib cookie-jar browser. Only configured admins get a session."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.control.auth.test_oidc_pages import Browser, LabIdP

from meshscale.control.api import API
from meshscale.control.auth.pages import OIDCPages
from meshscale.control.console import ConsoleSettings, build
from meshscale.control.console.oidc import ConsoleOIDC
from meshscale.control.oidcconfig import OIDCConfig
from meshscale.control.state import State
from meshscale.io.http import HTTPServer, Router

ALICE = {"sub": "alice-1", "email": "alice@example.net", "email_verified": True, "groups": []}
BOB = {"sub": "bob-1", "email": "bob@example.net", "email_verified": True, "groups": ["ops"]}
EVE = {"sub": "eve-1", "email": "eve@example.net", "email_verified": False, "groups": ["dev"]}


def run(tmp_path: Path, body: Any) -> None:
    async def main() -> None:
        rng = random.Random(1)
        state = State.open(tmp_path / "db.sqlite", clock=lambda: datetime.now(UTC),
                           rand=rng.randbytes)  # fmt: skip
        idp = LabIdP()
        idp_router = Router()
        idp.mount(idp_router)
        idp_http = HTTPServer(idp_router)
        srv = await idp_http.start("127.0.0.1", 0)
        idp.issuer = f"http://127.0.0.1:{srv.sockets[0].getsockname()[1]}"
        router = Router()
        http = HTTPServer(router)
        srv2 = await http.start("127.0.0.1", 0)
        base = f"http://127.0.0.1:{srv2.sockets[0].getsockname()[1]}"
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
