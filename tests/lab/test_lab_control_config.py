"""The config the lab writes for meshscale-control is one the real program reads as meant.

No root needed: the lab's ControlServer generates this config for every lab test and the demo,
so a key the program does not know (a warning, and a silently default setting) would make
every lab run test something else than it says.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address
from pathlib import Path

from meshscale.control.config import config_from_mapping
from meshscale.lab.control import DERP_REGION_ID, lab_config, merge_config


def _config(tmp_path: Path, **extra: object) -> dict[str, object]:
    cfg = lab_config(
        "ctl.lab",
        IPv4Address("203.0.113.10"),
        IPv6Address("2001:db8:1::a"),
        tmp_path / "ctl.pem",
        tmp_path / "ctl.key",
        tmp_path / "control.sock",
        base_domain="ms.lab",
    )
    return merge_config(cfg, extra)


def test_lab_config_is_read_without_warnings(tmp_path: Path) -> None:
    cfg = config_from_mapping(_config(tmp_path), tmp_path)
    assert cfg.warnings == ()
    assert cfg.server_url == "https://ctl.lab" and cfg.server_host == "ctl.lab"
    assert cfg.tls_enabled and cfg.tls_cert_path == tmp_path / "ctl.pem"
    assert (cfg.listen_addr.host, cfg.listen_addr.port) == ("", 443)  # every address family
    ds = cfg.derp.server
    assert ds.enabled and ds.region_id == DERP_REGION_ID and ds.region_code == "lab"
    assert ds.stun_listen_addr is not None
    assert (ds.stun_listen_addr.host, ds.stun_listen_addr.port) == ("", 3478)
    assert str(ds.ipv4) == "203.0.113.10" and str(ds.ipv6) == "2001:db8:1::a"
    assert ds.automatically_add_embedded_derp_region and ds.verify_clients
    assert cfg.derp.urls == ()  # never fetch Tailscale's map from inside the lab
    assert cfg.dns.base_domain == "ms.lab" and cfg.dns.magic_dns
    assert cfg.unix_socket == tmp_path / "control.sock"


def test_variants_the_relay_tests_use_are_read_without_warnings(tmp_path: Path) -> None:
    metrics = config_from_mapping(_config(tmp_path, metrics_listen_addr="127.0.0.1:8081"), tmp_path)
    assert metrics.warnings == ()
    assert metrics.metrics_listen_addr is not None and metrics.metrics_listen_addr.port == 8081
    region = tmp_path / "derpmap.json"
    standalone = _config(tmp_path, derp={"server": {"enabled": False}, "paths": [str(region)]})
    cfg = config_from_mapping(standalone, tmp_path)
    assert cfg.warnings == ()
    assert not cfg.derp.server.enabled and cfg.derp.paths == (region,)
    assert cfg.derp.server.region_id == DERP_REGION_ID  # merged, not replaced
