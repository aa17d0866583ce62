"""Checks on Headscale's ``oidc:`` keys, so a bad value stops the server at load, naming the key.

Parsing lives in :mod:`meshscale.control.config`; this module only refuses what would make the
login flow unsafe or broken (Headscale main validates issuer and client at load as well).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

from meshscale.control.yamlkeys import ConfigError

# Parameters our authorization URL sets itself; extra_params must not override them.
RESERVED_PARAMS = frozenset(
    {
        "client_id",
        "redirect_uri",
        "response_type",
        "scope",
        "state",
        "nonce",
        "code_challenge",
        "code_challenge_method",
    }
)
PKCE_METHODS = ("S256", "plain")


@dataclass(frozen=True, slots=True)
class OIDCConfig:
    """Headscale's ``oidc:`` section; ``issuer`` set means OIDC sign-in is on."""

    issuer: str = ""
    client_id: str = ""
    client_secret: str = field(default="", repr=False)
    client_secret_path: Path | None = None
    scope: tuple[str, ...] = ("openid", "profile", "email")
    extra_params: Mapping[str, str] = field(default_factory=dict)
    allowed_domains: tuple[str, ...] = ()
    allowed_users: tuple[str, ...] = ()
    allowed_groups: tuple[str, ...] = ()
    email_verified_required: bool = True
    only_start_if_oidc_is_available: bool = True
    use_expiry_from_token: bool = False
    expiry: timedelta | None = None
    pkce_enabled: bool = False
    pkce_method: str = "S256"
    groups_claim: str = "groups"

    @property
    def enabled(self) -> bool:
        return bool(self.issuer)


def validate_oidc(cfg: OIDCConfig) -> None:
    """Raise :class:`ConfigError` naming the first bad ``oidc.*`` key; no-op when OIDC is off."""
    if not cfg.enabled:
        return
    parts = urlsplit(cfg.issuer)
    # http is accepted for lab issuers on loopback or in namespaces; production uses https.
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ConfigError(
            f"config: oidc.issuer: want an http(s) URL with a host, got {cfg.issuer!r:.80}"
        )
    if parts.query or parts.fragment:
        raise ConfigError("config: oidc.issuer: must not carry a query or fragment")
    if not cfg.client_id:
        raise ConfigError("config: oidc.client_id: required when oidc.issuer is set")
    if bool(cfg.client_secret) == (cfg.client_secret_path is not None):
        raise ConfigError(
            "config: oidc.client_secret: set exactly one of client_secret and client_secret_path"
        )
    if "openid" not in cfg.scope:
        raise ConfigError(f"config: oidc.scope: must include openid, got {list(cfg.scope)}")
    reserved = sorted(RESERVED_PARAMS & set(cfg.extra_params))
    if reserved:
        raise ConfigError(
            f"config: oidc.extra_params: {', '.join(reserved)} is set by meshscale itself"
        )
    if cfg.pkce_method not in PKCE_METHODS:
        raise ConfigError(
            f"config: oidc.pkce.method: want S256 or plain, got {cfg.pkce_method!r:.20}"
        )
    if cfg.expiry is not None and cfg.expiry < timedelta(0):
        raise ConfigError("config: oidc.expiry: want a duration >= 0 (0 = no expiry)")
    for key, values in (
        ("allowed_domains", cfg.allowed_domains),
        ("allowed_users", cfg.allowed_users),
        ("allowed_groups", cfg.allowed_groups),
    ):
        if any(not v.strip() for v in values):
            raise ConfigError(f"config: oidc.{key}: empty entry")
    if any("@" in d for d in cfg.allowed_domains):
        raise ConfigError("config: oidc.allowed_domains: want bare domains, not addresses")
    if any("@" not in u for u in cfg.allowed_users):
        raise ConfigError("config: oidc.allowed_users: want email addresses")
    if not cfg.groups_claim.strip():
        raise ConfigError("config: oidc.groups_claim: must not be empty")
