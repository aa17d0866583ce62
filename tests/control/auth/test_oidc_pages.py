"""OIDC sign-in end to end over real HTTP: a test IdP (real JWS tokens), our pages, and a
stdlib HTTP client with a cookie jar playing the browser."""

from __future__ import annotations

import asyncio
import http.cookiejar
import json
import random
import re
import secrets
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from joserfc import jwt
from joserfc.jwk import RSAKey

from meshscale.control.auth.pages import OIDCPages
from meshscale.control.models import RegisterMethod
from meshscale.control.oidcconfig import OIDCConfig
from meshscale.control.state import State
from meshscale.io.http import HTTPServer, Request, Response, Router
from meshscale.key import MachinePublic, NodePublic


@dataclass
class LabIdP:
    """A minimal OIDC provider: the user to log in is set per test, consent is automatic."""

    key: RSAKey = field(default_factory=lambda: RSAKey.generate_key(2048, parameters={"kid": "k"}))
    user: dict[str, Any] = field(default_factory=dict)
    issuer: str = ""
    codes: dict[str, dict[str, Any]] = field(default_factory=dict)
    nonce_override: str | None = None

    def mount(self, router: Router) -> None:
        router.add("GET", "/.well-known/openid-configuration", self.discovery)
        router.add("GET", "/jwks", self.jwks)
        router.add("GET", "/auth", self.auth)
        router.add("POST", "/token", self.token)

    async def discovery(self, req: Request) -> Response:
        doc = {
            "issuer": self.issuer,
            "authorization_endpoint": self.issuer + "/auth",
            "token_endpoint": self.issuer + "/token",
            "jwks_uri": self.issuer + "/jwks",
        }
        return Response.json_bytes(json.dumps(doc).encode())

    async def jwks(self, req: Request) -> Response:
        doc = {"keys": [self.key.as_dict(private=False)]}
        return Response.json_bytes(json.dumps(doc).encode())

    async def auth(self, req: Request) -> Response:
        q = req.query
        code = secrets.token_urlsafe(16)
        self.codes[code] = {"nonce": q["nonce"], "client_id": q["client_id"],
                            "challenge": q.get("code_challenge", "")}  # fmt: skip
        loc = q["redirect_uri"] + "?" + urlencode({"code": code, "state": q["state"]})
        return Response(302, b"", [("Location", loc)], None)

    async def token(self, req: Request) -> Response:
        form = {k: v[0] for k, v in parse_qs(req.body.decode()).items()}
        grant = self.codes.pop(form.get("code", ""), None)
        if grant is None or not form.get("code_verifier"):
            return Response.json_bytes(b'{"error":"invalid_grant"}', 400)
        now = int(time.time())
        claims = {"iss": self.issuer, "aud": grant["client_id"], "iat": now, "exp": now + 300,
                  "nonce": self.nonce_override or grant["nonce"], **self.user}  # fmt: skip
        tok = jwt.encode({"alg": "RS256", "kid": "k"}, claims, self.key)
        return Response.json_bytes(json.dumps({"id_token": tok, "token_type": "Bearer"}).encode())


class Browser:
    """urllib with a cookie jar; follows redirects; returns (status, final URL, body)."""

    def __init__(self) -> None:
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))

    def open(self, url: str, data: bytes | None = None) -> tuple[int, str, str]:
        try:
            with self.opener.open(url, data=data, timeout=10) as r:
                return r.status, r.geturl(), r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.geturl(), e.read().decode()


def mk(n: int) -> MachinePublic:
    return MachinePublic(n.to_bytes(2, "big") * 16)


def nk(n: int) -> NodePublic:
    return NodePublic((n + 50000).to_bytes(4, "big") * 8)


@dataclass
class Lab:
    state: State
    idp: LabIdP
    base: str


async def serve_router() -> tuple[Router, HTTPServer, str]:
    """A real HTTP server on a free loopback port: its (empty) router, the server, its base URL."""
    router = Router()
    http = HTTPServer(router)
    srv = await http.start("127.0.0.1", 0)
    return router, http, f"http://127.0.0.1:{srv.sockets[0].getsockname()[1]}"


async def serve_idp() -> tuple[LabIdP, HTTPServer]:
    """The test IdP served over real HTTP, its issuer set to where it listens."""
    idp = LabIdP()
    router, http, idp.issuer = await serve_router()
    idp.mount(router)
    return idp, http


async def start(tmp_path: Path, **cfg: Any) -> tuple[Lab, list[HTTPServer]]:
    rng = random.Random(1)
    state = State.open(tmp_path / "db.sqlite", None, clock=lambda: datetime.now(UTC),
                       rand=rng.randbytes, randbelow=rng.randrange)  # fmt: skip
    idp, idp_http = await serve_idp()
    ctl_router, ctl_http, base = await serve_router()
    oidc = OIDCConfig(issuer=idp.issuer, client_id="meshscale", client_secret="s",
                      pkce_enabled=True, **cfg)  # fmt: skip
    OIDCPages(oidc, "s", base, state).mount(ctl_router)
    return Lab(state, idp, base), [idp_http, ctl_http]


def run(tmp_path: Path, body: Any, **cfg: Any) -> None:
    async def main() -> None:
        lab, servers = await start(tmp_path, **cfg)
        try:
            await asyncio.to_thread(body, lab)
        finally:
            for s in servers:
                await s.close(grace=0.1)
            lab.state.close()

    asyncio.run(main())


ALICE = {"sub": "alice-1", "email": "alice@example.net", "email_verified": True,
         "groups": ["ops"], "preferred_username": "alice"}  # fmt: skip


def login(lab: Lab, n: int, browser: Browser | None = None) -> tuple[str, int, str, str]:
    reg = lab.state.begin_registration(mk(n), nk(n), {"Hostname": f"host{n}"})
    b = browser or Browser()
    status, url, body = b.open(f"{lab.base}/register/{reg.id}")
    return reg.id, status, url, body


def confirm(lab: Lab, reg_id: str, body: str, b: Browser) -> tuple[int, str]:
    token = re.search(r"name='meshscale_register_confirm' value='([^']+)'", body)
    assert token, body
    data = urlencode({"meshscale_register_confirm": token.group(1)}).encode()
    status, _, page = b.open(f"{lab.base}/register/confirm/{reg_id}", data=data)
    return status, page


def test_full_flow_enrolls_only_on_the_confirm_post(tmp_path: Path) -> None:
    def body(lab: Lab) -> None:
        lab.idp.user = ALICE
        b = Browser()
        reg_id, status, url, page = login(lab, 1, b)
        assert status == 200, page
        assert urlsplit(url).path == f"/register/confirm/{reg_id}"  # code-free after 303
        assert "host1" in page
        assert lab.state.list_nodes() == []  # the GET callback never enrolls
        status, done = confirm(lab, reg_id, page, b)
        assert status == 200, done
        (node,) = lab.state.list_nodes()
        user = lab.state.get_user(node.user_id)
        assert (user.oidc_issuer, user.oidc_subject) == (lab.idp.issuer, "alice-1")
        assert user.groups == ("ops",)
        assert node.register_method is RegisterMethod.OIDC
        # The confirm token is single use.
        status, _ = confirm(lab, reg_id, page, b)
        assert status == 410

    run(tmp_path, body)


def test_confirm_without_the_cookie_is_refused(tmp_path: Path) -> None:
    def body(lab: Lab) -> None:
        lab.idp.user = ALICE
        reg_id, status, _, page = login(lab, 1)
        assert status == 200
        status, _ = confirm(lab, reg_id, page, Browser())  # another browser: no cookie
        assert status == 403
        assert lab.state.list_nodes() == []

    run(tmp_path, body)


@pytest.mark.parametrize(
    ("user", "cfg", "why"),
    [
        (ALICE, {"allowed_groups": ("admins",)}, "allowed group"),
        (ALICE, {"allowed_domains": ("other.net",)}, "domain is not allowed"),
        ({**ALICE, "email_verified": False}, {"allowed_domains": ("example.net",)}, "not verified"),
    ],
)
def test_refusals_are_4xx_and_register_nothing(
    tmp_path: Path, user: dict[str, Any], cfg: dict[str, Any], why: str
) -> None:
    def body(lab: Lab) -> None:
        lab.idp.user = user
        _, status, _, page = login(lab, 1)
        assert status == 403, page
        assert why in page
        assert lab.state.list_nodes() == []
        assert lab.state.list_users() == []

    run(tmp_path, body, **cfg)


def test_wrong_nonce_and_replayed_callback_are_refused(tmp_path: Path) -> None:
    def body(lab: Lab) -> None:
        lab.idp.user = ALICE
        lab.idp.nonce_override = "not-the-nonce"
        _, status, _, page = login(lab, 1)
        assert status == 403
        assert "nonce" in page
        lab.idp.nonce_override = None
        # Capture the callback URL, use it once, then replay it.
        b = Browser()
        reg = lab.state.begin_registration(mk(2), nk(2), {"Hostname": "h2"})

        class NoRedirect(urllib.request.HTTPRedirectHandler):
            def redirect_request(self, *a: Any, **k: Any) -> None:
                return None

        raw = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(b.jar), NoRedirect)
        try:
            raw.open(f"{lab.base}/register/{reg.id}", timeout=10)
        except urllib.error.HTTPError as e:
            idp_url = e.headers["Location"]
        try:
            raw.open(idp_url, timeout=10)
        except urllib.error.HTTPError as e:
            callback = e.headers["Location"]
        assert b.open(callback)[0] == 200
        status, _, page = b.open(callback)
        assert status == 410, page
        assert lab.state.list_nodes() == []

    run(tmp_path, body)


@pytest.mark.parametrize(("expiry", "want_days"), [(timedelta(days=3), 3), (timedelta(0), None)])
def test_oidc_expiry_sets_the_node_expiry(
    tmp_path: Path, expiry: timedelta, want_days: int | None
) -> None:
    # Headscale's pre-0.29 oidc.expiry: nodes registered through OIDC expire after it; 0 = never.
    def body(lab: Lab) -> None:
        lab.idp.user = ALICE
        b = Browser()
        reg_id, _, _, page = login(lab, 1, b)
        status, done = confirm(lab, reg_id, page, b)
        assert status == 200, done
        (node,) = lab.state.list_nodes()
        if want_days is None:
            assert node.expiry is None
        else:
            assert node.expiry is not None
            left = node.expiry - datetime.now(UTC)
            want = timedelta(days=want_days)
            assert want - timedelta(minutes=5) < left <= want

    run(tmp_path, body, expiry=expiry)
