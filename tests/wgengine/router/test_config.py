"""router.Config: what the backend asks the OS for, built from the netmap's addresses."""

from __future__ import annotations

import ipaddress

import pytest

from meshscale.wgengine.router import TAILNET_ROUTES, Config


def test_addresses_become_host_addresses_with_the_tailnet_routes() -> None:
    cfg = Config.for_addresses(["100.64.0.1/32", "fd7a:115c:a1e0::1/128", "100.64.0.1"])
    assert cfg.local_addrs == (
        ipaddress.ip_address("100.64.0.1"),
        ipaddress.ip_address("fd7a:115c:a1e0::1"),
    )
    assert cfg.routes == TAILNET_ROUTES
    assert [str(r) for r in TAILNET_ROUTES] == ["100.64.0.0/10", "fd7a:115c:a1e0::/48"]


def test_no_addresses_no_routes() -> None:
    assert Config.for_addresses([]) == Config()


def test_bad_address_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="does not appear"):
        Config.for_addresses(["100.64.0.300/32"])
