"""ID token verification and the ``allowed_*`` admission rules (sans-IO).

The caller fetches discovery and JWKS; this module only decides. Every refusal is a
:class:`LoginRefused` carrying the HTTP status the callback page answers with (never a 500).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

if TYPE_CHECKING:
    from meshscale.control.oidcconfig import OIDCConfig

# Asymmetric algorithms only: "none" and HMAC (keyed with the public client_secret) are refused.
ALGORITHMS = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
)
LEEWAY_S = 60


class LoginRefused(Exception):
    """A login that must not proceed; ``status`` is the 4xx the browser sees."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True, slots=True)
class IdentityClaims:
    """What meshscale keeps from a verified ID token. The user key is (issuer, subject)."""

    issuer: str
    subject: str
    expires_at: int
    email: str = ""
    email_verified: bool = False
    name: str = ""
    preferred_username: str = ""
    picture: str = ""
    groups: tuple[str, ...] = ()


def load_jwks(document: bytes | str | Mapping[str, object]) -> KeySet:
    """Parse a JWKS document; a malformed or empty one is the IdP's fault: 502."""
    try:
        data = json.loads(document) if isinstance(document, bytes | str) else dict(document)
        keys = KeySet.import_key_set(data)  # type: ignore[arg-type]
    except (ValueError, TypeError, KeyError, JoseError) as e:
        raise LoginRefused(502, f"identity provider sent an unusable JWKS: {e}") from None
    if not keys.keys:
        raise LoginRefused(502, "identity provider sent an empty JWKS")
    return keys


def _truthy(value: object) -> bool:
    # Some IdPs send email_verified as the string "true" (Headscale accepts it too).
    if isinstance(value, bool):
        return value
    return isinstance(value, str) and value.strip().lower() == "true"


def _groups(value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,) if value else ()
    if isinstance(value, Sequence):
        return tuple(g for g in value if isinstance(g, str) and g)
    return ()


def _text(claims: Mapping[str, object], key: str) -> str:
    value = claims.get(key)
    return value if isinstance(value, str) else ""


def verify_id_token(
    token: str,
    keys: KeySet,
    *,
    issuer: str,
    client_id: str,
    nonce: str,
    groups_claim: str = "groups",
    now: float | None = None,
) -> IdentityClaims:
    """Check signature (JWKS), ``iss``, ``aud``/``azp``, ``exp``/``iat`` and ``nonce``."""
    if not token or token.count(".") != 2:
        raise LoginRefused(400, "id_token missing or not a JWS")
    try:
        decoded = jwt.decode(token, keys, algorithms=list(ALGORITHMS))
    except (JoseError, ValueError, TypeError) as e:
        raise LoginRefused(403, f"id_token signature not valid: {type(e).__name__}") from None
    claims: Mapping[str, object] = decoded.claims
    t = time.time() if now is None else now
    iss = _text(claims, "iss")
    if iss.rstrip("/") != issuer.rstrip("/"):
        raise LoginRefused(403, "id_token issuer does not match oidc.issuer")
    aud = claims.get("aud")
    audiences = [aud] if isinstance(aud, str) else list(aud) if isinstance(aud, list) else []
    if client_id not in audiences:
        raise LoginRefused(403, "id_token audience is not our client_id")
    azp = claims.get("azp")
    if len(audiences) > 1 and azp != client_id:
        raise LoginRefused(403, "id_token azp is not our client_id")
    exp = claims.get("exp")
    if not isinstance(exp, int | float) or isinstance(exp, bool):
        raise LoginRefused(403, "id_token has no exp")
    if exp + LEEWAY_S < t:
        raise LoginRefused(403, "id_token expired")
    iat = claims.get("iat")
    if isinstance(iat, int | float) and iat - LEEWAY_S > t:
        raise LoginRefused(403, "id_token issued in the future")
    got_nonce = _text(claims, "nonce")
    if not got_nonce:
        raise LoginRefused(400, "id_token has no nonce")
    if not nonce or got_nonce != nonce:
        raise LoginRefused(403, "id_token nonce does not match this login")
    sub = _text(claims, "sub")
    if not sub:
        raise LoginRefused(403, "id_token has no sub")
    return IdentityClaims(
        issuer=iss,
        subject=sub,
        expires_at=int(exp),
        email=_text(claims, "email"),
        email_verified=_truthy(claims.get("email_verified")),
        name=_text(claims, "name"),
        preferred_username=_text(claims, "preferred_username"),
        picture=_text(claims, "picture"),
        groups=_groups(claims.get(groups_claim)),
    )


def merge_userinfo(
    claims: IdentityClaims, info: Mapping[str, object], groups_claim: str
) -> IdentityClaims:
    """Overlay non-empty UserInfo values, only when UserInfo ``sub`` is the token's ``sub``.

    ``email_verified`` can only be raised by UserInfo, never lowered (as Headscale does).
    """
    if info.get("sub") != claims.subject:
        return claims
    email = _text(info, "email") or claims.email
    verified = claims.email_verified or _truthy(info.get("email_verified"))
    if email != claims.email and not _truthy(info.get("email_verified")):
        verified = False  # a different address must carry its own verification
    return IdentityClaims(
        issuer=claims.issuer,
        subject=claims.subject,
        expires_at=claims.expires_at,
        email=email,
        email_verified=verified,
        name=_text(info, "name") or claims.name,
        preferred_username=_text(info, "preferred_username") or claims.preferred_username,
        picture=_text(info, "picture") or claims.picture,
        groups=_groups(info.get(groups_claim)) or claims.groups,
    )


def check_allowed(claims: IdentityClaims, cfg: OIDCConfig) -> None:
    """Apply ``allowed_groups``, ``allowed_domains``, ``allowed_users``; all set must pass."""
    if cfg.allowed_groups and not set(cfg.allowed_groups) & set(claims.groups):
        raise LoginRefused(403, "not a member of an allowed group")
    if not (cfg.allowed_domains or cfg.allowed_users):
        return
    if cfg.email_verified_required and not claims.email_verified:
        raise LoginRefused(403, "email address is not verified")
    if not claims.email or "@" not in claims.email:
        raise LoginRefused(403, "no email address in the identity")
    if cfg.allowed_domains and claims.email.rsplit("@", 1)[1] not in cfg.allowed_domains:
        raise LoginRefused(403, "email domain is not allowed")
    if cfg.allowed_users and claims.email not in cfg.allowed_users:
        raise LoginRefused(403, "user is not allowed")
