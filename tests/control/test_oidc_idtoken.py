"""ID token verification and the allowed_* rules, with tokens signed by real test keys."""

from __future__ import annotations

import json
import time
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from joserfc import jwt
from joserfc.jwk import ECKey, KeySet, OctKey, RSAKey

from meshscale.control.auth.idtoken import (
    IdentityClaims,
    LoginRefused,
    check_allowed,
    load_jwks,
    merge_userinfo,
    verify_id_token,
)
from meshscale.control.oidcconfig import OIDCConfig

ISS = "https://idp.example.net"
CID = "meshscale"
NONCE = "n-0123456789abcdef"
NOW = 1_800_000_000
IDP_KEY = RSAKey.generate_key(2048, parameters={"kid": "idp-1"})
OTHER_KEY = RSAKey.generate_key(2048, parameters={"kid": "idp-1"})  # same kid, other key
JWKS = load_jwks(json.dumps({"keys": [IDP_KEY.as_dict(private=False)]}))


def claims(**over: object) -> dict[str, object]:
    base: dict[str, object] = {
        "iss": ISS,
        "sub": "user-1",
        "aud": CID,
        "exp": NOW + 300,
        "iat": NOW,
        "nonce": NONCE,
        "email": "alice@example.net",
        "email_verified": True,
        "groups": ["ops", "dev"],
    }
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


def sign(c: dict[str, object], key: RSAKey = IDP_KEY, alg: str = "RS256") -> str:
    return jwt.encode({"alg": alg, "kid": "idp-1"}, c, key)


def verify(token: str, nonce: str = NONCE, keys: KeySet = JWKS) -> IdentityClaims:
    return verify_id_token(token, keys, issuer=ISS, client_id=CID, nonce=nonce, now=NOW)


def test_good_token_gives_issuer_subject_and_groups() -> None:
    got = verify(sign(claims()))
    assert (got.issuer, got.subject, got.email, got.email_verified) == (
        ISS,
        "user-1",
        "alice@example.net",
        True,
    )
    assert got.groups == ("ops", "dev")
    assert got.expires_at == NOW + 300


def test_trailing_slash_issuer_matches() -> None:
    assert verify(sign(claims(iss=ISS + "/"))).issuer == ISS + "/"


def test_ec_keys_work_too() -> None:
    ec = ECKey.generate_key("P-256", parameters={"kid": "ec"})
    keys = load_jwks({"keys": [ec.as_dict(private=False)]})
    tok = jwt.encode({"alg": "ES256", "kid": "ec"}, claims(), ec)
    assert verify(tok, keys=keys).subject == "user-1"


@pytest.mark.parametrize(
    ("token_claims", "nonce", "status", "why"),
    [
        (claims(nonce="other"), NONCE, 403, "nonce"),
        (claims(nonce=None), NONCE, 400, "nonce"),
        (claims(), "", 403, "nonce"),
        (claims(aud="someone-else"), NONCE, 403, "audience"),
        (claims(aud=["someone-else", CID]), NONCE, 403, "azp"),
        (claims(exp=NOW - 120), NONCE, 403, "expired"),
        (claims(exp=None), NONCE, 403, "exp"),
        (claims(iat=NOW + 3600), NONCE, 403, "future"),
        (claims(iss="https://evil.example.net"), NONCE, 403, "issuer"),
        (claims(sub=""), NONCE, 403, "sub"),
    ],
)
def test_bad_claims_are_refused(
    token_claims: dict[str, object], nonce: str, status: int, why: str
) -> None:
    with pytest.raises(LoginRefused) as info:
        verify(sign(token_claims), nonce=nonce)
    assert info.value.status == status
    assert why in info.value.reason


def test_multiple_audiences_with_our_azp_pass() -> None:
    assert verify(sign(claims(aud=["x", CID], azp=CID))).subject == "user-1"


def test_token_signed_by_another_key_is_refused() -> None:
    with pytest.raises(LoginRefused) as info:
        verify(sign(claims(), key=OTHER_KEY))
    assert info.value.status == 403


def test_hmac_with_the_public_key_material_is_refused() -> None:
    # alg confusion: an HS256 token must not be accepted even if some key could check it.
    oct_key = OctKey.import_key(b"k" * 32, {"kid": "idp-1"})
    tok = jwt.encode({"alg": "HS256", "kid": "idp-1"}, claims(), oct_key)
    keys = load_jwks({"keys": [oct_key.as_dict(private=True)]})
    with pytest.raises(LoginRefused):
        verify(tok, keys=keys)


def test_unsigned_token_is_refused() -> None:
    import base64

    def b64(d: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()

    with pytest.raises(LoginRefused):
        verify(f"{b64({'alg': 'none'})}.{b64(claims())}.")


def test_tampered_payload_is_refused() -> None:
    head, _, sig = sign(claims()).split(".")
    evil = sign(claims(sub="admin")).split(".")[1]
    with pytest.raises(LoginRefused):
        verify(f"{head}.{evil}.{sig}")


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_garbage_token_is_only_login_refused(text: str) -> None:
    with pytest.raises(LoginRefused):
        verify(text)


@settings(max_examples=100, deadline=None)
@given(st.one_of(st.binary(max_size=200), st.text(max_size=200)))
def test_garbage_jwks_is_only_login_refused(doc: bytes | str) -> None:
    with pytest.raises(LoginRefused) as info:
        load_jwks(doc)
    assert info.value.status == 502


def test_string_forms_of_email_verified_and_groups() -> None:
    got = verify(sign(claims(email_verified="true", groups="ops")))
    assert got.email_verified
    assert got.groups == ("ops",)
    assert not verify(sign(claims(email_verified="false"))).email_verified


def test_userinfo_overrides_only_for_the_same_subject() -> None:
    base = verify(sign(claims(email_verified=False)))
    other = merge_userinfo(
        base, {"sub": "user-2", "email_verified": True, "groups": ["x"]}, "groups"
    )
    assert other == base
    same = merge_userinfo(
        base, {"sub": "user-1", "email_verified": True, "groups": ["x"]}, "groups"
    )
    assert same.email_verified
    assert same.groups == ("x",)
    verified = verify(sign(claims()))
    # UserInfo cannot lower a verified email back to unverified.
    assert merge_userinfo(
        verified, {"sub": "user-1", "email_verified": False}, "groups"
    ).email_verified


IDENT = IdentityClaims(
    issuer=ISS,
    subject="u",
    expires_at=NOW,
    email="alice@example.net",
    email_verified=True,
    groups=("ops",),
)


@pytest.mark.parametrize(
    ("cfg", "ident", "ok"),
    [
        (OIDCConfig(), IDENT, True),
        (OIDCConfig(allowed_groups=("ops",)), IDENT, True),
        (OIDCConfig(allowed_groups=("admins",)), IDENT, False),
        (OIDCConfig(allowed_groups=("Ops",)), IDENT, False),  # case-sensitive
        (OIDCConfig(allowed_domains=("example.net",)), IDENT, True),
        (OIDCConfig(allowed_domains=("net",)), IDENT, False),
        (OIDCConfig(allowed_domains=("sub.example.net",)), IDENT, False),
        (OIDCConfig(allowed_domains=("example.net",)), replace(IDENT, email_verified=False), False),
        (
            OIDCConfig(allowed_domains=("example.net",), email_verified_required=False),
            replace(IDENT, email_verified=False),
            True,
        ),
        # A group filter alone never needs a verified email.
        (OIDCConfig(allowed_groups=("ops",)), replace(IDENT, email_verified=False), True),
        (OIDCConfig(allowed_users=("alice@example.net",)), IDENT, True),
        (OIDCConfig(allowed_users=("bob@example.net",)), IDENT, False),
        (OIDCConfig(allowed_users=("alice@example.net",)), replace(IDENT, email=""), False),
        (
            OIDCConfig(allowed_groups=("ops",), allowed_domains=("other.net",)),
            IDENT,
            False,
        ),
    ],
)
def test_allowed_rules(cfg: OIDCConfig, ident: IdentityClaims, ok: bool) -> None:
    if ok:
        check_allowed(ident, cfg)
    else:
        with pytest.raises(LoginRefused) as info:
            check_allowed(ident, cfg)
        assert info.value.status == 403


def test_real_clock_is_used_by_default() -> None:
    tok = sign(claims(exp=int(time.time()) + 60, iat=int(time.time())))
    assert verify_id_token(tok, JWKS, issuer=ISS, client_id=CID, nonce=NONCE).subject == "user-1"
