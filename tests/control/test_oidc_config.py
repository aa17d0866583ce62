"""The ``oidc:`` keys: good configs load, each bad value is refused naming its key."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshscale.control.config import ConfigError, config_from_mapping

SD = Path("/srv/msc")
GOOD: dict[str, object] = {
    "issuer": "https://idp.example.net/",
    "client_id": "meshscale",
    "client_secret": "s3cret",
}


def oidc(**over: object) -> dict[str, object]:
    return {"oidc": {**GOOD, **over}}


def test_good_config_loads_and_keeps_every_key() -> None:
    cfg = config_from_mapping(
        oidc(
            scope=["openid", "email", "groups"],
            extra_params={"prompt": "login"},
            allowed_domains=["example.net"],
            allowed_groups=["ops"],
            allowed_users=["a@example.net"],
            pkce={"enabled": True, "method": "S256"},
            email_verified_required=False,
            use_expiry_from_token=True,
            groups_claim="roles",
        ),
        SD,
    ).oidc
    assert cfg.enabled
    assert cfg.scope == ("openid", "email", "groups")
    assert cfg.extra_params == {"prompt": "login"}
    assert (cfg.pkce_enabled, cfg.pkce_method, cfg.groups_claim) == (True, "S256", "roles")
    assert cfg.allowed_groups == ("ops",)
    assert not cfg.email_verified_required
    assert cfg.use_expiry_from_token
    assert "s3cret" not in repr(cfg)


def test_http_issuer_is_allowed_for_labs() -> None:
    assert config_from_mapping(oidc(issuer="http://10.0.0.1:3000"), SD).oidc.enabled


def test_oidc_off_needs_nothing() -> None:
    assert not config_from_mapping({"oidc": {"issuer": ""}}, SD).oidc.enabled


def test_secret_path_alone_is_enough(tmp_path: Path) -> None:
    cfg = config_from_mapping(
        {"oidc": {**GOOD, "client_secret": "", "client_secret_path": str(tmp_path / "s")}}, SD
    ).oidc
    assert cfg.client_secret_path == tmp_path / "s"


@pytest.mark.parametrize(
    ("over", "key"),
    [
        ({"issuer": "ftp://idp.example.net"}, "oidc.issuer"),
        ({"issuer": "https://"}, "oidc.issuer"),
        ({"issuer": "idp.example.net"}, "oidc.issuer"),
        ({"issuer": "https://idp.example.net/?x=1"}, "oidc.issuer"),
        ({"client_id": ""}, "oidc.client_id"),
        ({"client_secret": ""}, "oidc.client_secret"),
        ({"client_secret_path": "/s"}, "oidc.client_secret"),
        ({"scope": ["profile", "email"]}, "oidc.scope"),
        ({"extra_params": {"state": "x"}}, "oidc.extra_params"),
        ({"extra_params": {"redirect_uri": "https://evil"}}, "oidc.extra_params"),
        ({"extra_params": ["a"]}, "oidc.extra_params"),
        ({"pkce": {"enabled": True, "method": "S512"}}, "oidc.pkce.method"),
        ({"pkce": {"enabled": "yes"}}, "oidc.pkce.enabled"),
        ({"expiry": "-1h"}, "oidc.expiry"),
        ({"allowed_domains": ["a@example.net"]}, "oidc.allowed_domains"),
        ({"allowed_domains": [" "]}, "oidc.allowed_domains"),
        ({"allowed_users": ["bob"]}, "oidc.allowed_users"),
        ({"allowed_groups": [""]}, "oidc.allowed_groups"),
        ({"email_verified_required": "no"}, "oidc.email_verified_required"),
        ({"use_expiry_from_token": 1}, "oidc.use_expiry_from_token"),
        ({"groups_claim": ""}, "oidc.groups_claim"),
    ],
)
def test_bad_values_name_the_key(over: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_mapping(oidc(**over), SD)
    message = str(info.value)
    assert message.startswith(f"config: {key}"), message
    assert "\n" not in message
