"""The sans-IO login flow: authorization URL, state cookie, single-use state, CSRF confirm."""

from __future__ import annotations

import base64
import hashlib
from urllib.parse import parse_qs, urlsplit

import pytest

from meshscale.control.auth.idtoken import IdentityClaims, LoginRefused
from meshscale.control.auth.oidc import (
    MAX_SESSIONS,
    SESSION_TTL_S,
    Discovery,
    LoginFlow,
    parse_discovery,
    pkce_challenge,
)
from meshscale.control.oidcconfig import OIDCConfig

ISS = "https://idp.example.net"
DISC = Discovery(ISS, ISS + "/auth", ISS + "/token", ISS + "/jwks")
IDENT = IdentityClaims(issuer=ISS, subject="u1", expires_at=0, email="a@example.net")


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def flow(server_url: str = "https://hs.example.net/", **cfg: object) -> tuple[LoginFlow, Clock]:
    clock = Clock()
    c = OIDCConfig(issuer=ISS, client_id="cid", client_secret="s", **cfg)  # type: ignore[arg-type]
    return LoginFlow(c, server_url, clock), clock


def callback(f: LoginFlow, auth_id: str = "hskey-authreq-1") -> tuple[str, dict[str, str]]:
    started = f.start(auth_id, DISC)
    state = parse_qs(urlsplit(started.url).query)["state"][0]
    return state, {started.cookie.name: started.cookie.value}


def test_authorization_url_carries_state_nonce_and_pkce_s256() -> None:
    f, _ = flow(pkce_enabled=True, extra_params={"prompt": "login"})
    started = f.start("hskey-authreq-1", DISC)
    q = {k: v[0] for k, v in parse_qs(urlsplit(started.url).query).items()}
    assert started.url.startswith(ISS + "/auth?")
    assert q["client_id"] == "cid"
    assert q["redirect_uri"] == "https://hs.example.net/oidc/callback"
    assert q["response_type"] == "code"
    assert q["scope"] == "openid profile email"
    assert q["state"] == started.session.state
    assert q["nonce"] == started.session.nonce
    assert q["prompt"] == "login"
    want = base64.urlsafe_b64encode(
        hashlib.sha256(started.session.verifier.encode()).digest()
    ).rstrip(b"=")
    assert q["code_challenge"] == want.decode()
    assert q["code_challenge_method"] == "S256"
    assert len({started.session.state, started.session.nonce, started.session.verifier}) == 3


def test_rfc7636_appendix_b_vector() -> None:
    verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"  # RFC 7636 Appendix B
    assert pkce_challenge(verifier, "S256") == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
    assert pkce_challenge(verifier, "plain") == verifier


def test_without_pkce_no_challenge_is_sent() -> None:
    f, _ = flow()
    assert "code_challenge" not in f.start("a", DISC).url


def test_state_cookie_is_secure_on_https_and_not_on_http() -> None:
    f, _ = flow()
    h = f.start("a", DISC).cookie.header()
    for part in ("Path=/oidc/callback", "HttpOnly", "SameSite=Lax", "Secure", "Max-Age=3600"):
        assert part in h
    f2, _ = flow("http://10.0.0.1:8080")
    assert "Secure" not in f2.start("a", DISC).cookie.header()


def test_callback_with_matching_cookie_consumes_the_state_once() -> None:
    f, _ = flow()
    state, cookies = callback(f)
    session, code = f.take_session({"code": "c1", "state": state}, cookies)
    assert (session.auth_id, code) == ("hskey-authreq-1", "c1")
    with pytest.raises(LoginRefused) as info:  # a replayed callback
        f.take_session({"code": "c1", "state": state}, cookies)
    assert info.value.status == 410


@pytest.mark.parametrize(
    ("query", "cookie_value", "status"),
    [
        ({"state": "STATE"}, None, 400),
        ({"code": "c"}, None, 400),
        ({"code": "c", "state": "abc"}, None, 400),
        ({"code": "c", "state": "STATE"}, "", 400),  # no cookie at all
        ({"code": "c", "state": "STATE"}, "other-value", 403),
        ({"error": "access_denied", "state": "STATE"}, None, 403),
    ],
)
def test_bad_callbacks_are_4xx(
    query: dict[str, str], cookie_value: str | None, status: int
) -> None:
    f, _ = flow()
    state, cookies = callback(f)
    q = {k: state if v == "STATE" else v for k, v in query.items()}
    if cookie_value == "":
        cookies = {}
    elif cookie_value is not None:
        cookies = {next(iter(cookies)): cookie_value}
    with pytest.raises(LoginRefused) as info:
        f.take_session(q, cookies)
    assert info.value.status == status


def test_unknown_state_with_a_forged_matching_cookie_is_410() -> None:
    f, _ = flow()
    with pytest.raises(LoginRefused) as info:
        f.take_session({"code": "c", "state": "forged-state"}, {"state_forged": "forged-state"})
    assert info.value.status == 410


def test_sessions_expire_and_are_bounded() -> None:
    f, clock = flow()
    state, cookies = callback(f)
    clock.t += SESSION_TTL_S + 1
    with pytest.raises(LoginRefused):
        f.take_session({"code": "c", "state": state}, cookies)
    for i in range(MAX_SESSIONS + 10):
        f.start(f"id{i}", DISC)
    assert len(f._sessions) == MAX_SESSIONS


def test_confirm_needs_the_csrf_token_in_form_and_cookie_once() -> None:
    f, _ = flow()
    pending = f.identity_verified("hskey-authreq-1", IDENT)
    cookie = f.confirm_cookie(pending)
    assert "SameSite=Strict" in cookie.header()
    assert "Path=/register/confirm/hskey-authreq-1" in cookie.header()
    for form, jar in (("", pending.csrf), (pending.csrf, ""), ("x", pending.csrf)):
        with pytest.raises(LoginRefused) as info:
            f.take_confirm("hskey-authreq-1", form, jar)
        assert info.value.status == 403
    assert f.take_confirm("hskey-authreq-1", pending.csrf, pending.csrf).identity == IDENT
    with pytest.raises(LoginRefused) as info:
        f.take_confirm("hskey-authreq-1", pending.csrf, pending.csrf)
    assert info.value.status == 410


def test_discovery_issuer_must_match() -> None:
    doc = {
        "issuer": ISS + "/",
        "authorization_endpoint": ISS + "/auth",
        "token_endpoint": ISS + "/token",
        "jwks_uri": ISS + "/jwks",
    }
    assert parse_discovery(doc, ISS).jwks_uri == ISS + "/jwks"
    with pytest.raises(LoginRefused):
        parse_discovery({**doc, "issuer": "https://evil"}, ISS)
    with pytest.raises(LoginRefused):
        parse_discovery({**doc, "jwks_uri": "file:///etc/passwd"}, ISS)
    with pytest.raises(LoginRefused):
        parse_discovery({k: v for k, v in doc.items() if k != "token_endpoint"}, ISS)
