"""meshscale-control configuration: defaults, a Headscale-shaped file, warnings, errors."""

from __future__ import annotations

import ipaddress
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshscale.control.config import (
    ConfigError,
    HostPort,
    config_from_mapping,
    load_config,
    parse_duration,
    parse_host_port,
    parse_yaml,
    state_options,
)
from meshscale.control.ipalloc import AllocationStrategy

VECTORS = Path(__file__).resolve().parent.parent / "vectors" / "control"
SD = Path("/srv/msc")


def test_defaults_without_a_file_run_a_server() -> None:
    cfg = load_config(None, state_dir=SD)
    assert cfg.state_dir == SD
    assert cfg.listen_addr == HostPort("", 8080)
    assert cfg.server_url == "http://127.0.0.1:8080"
    assert not cfg.tls_enabled
    assert cfg.derp.server.enabled
    assert cfg.derp.server.region_id == 999
    assert cfg.database.type == "sqlite"
    assert cfg.database.sqlite_path == SD / "db.sqlite"
    assert cfg.noise.private_key_path == SD / "noise_private.key"
    assert cfg.unix_socket == SD / "control.sock"
    assert cfg.unix_socket_permission == 0o770
    assert cfg.prefixes.v4 == ipaddress.IPv4Network("100.64.0.0/10")
    assert cfg.prefixes.v6 == ipaddress.IPv6Network("fd7a:115c:a1e0::/48")
    assert cfg.prefixes.allocation is AllocationStrategy.SEQUENTIAL
    assert cfg.ephemeral_node_inactivity_timeout == timedelta(minutes=30)
    assert cfg.node_expiry is None
    assert cfg.warnings == ()


def test_state_dir_from_environment() -> None:
    cfg = load_config(None, env={"MESHSCALE_CONTROL_STATE_DIR": "/tmp/elsewhere"})
    assert cfg.database.sqlite_path == Path("/tmp/elsewhere/db.sqlite")
    assert load_config(None, env={}).state_dir == Path("/var/lib/meshscale-control")


def test_headscale_shaped_file_loads() -> None:
    cfg = load_config(VECTORS / "config-headscale-shaped.yaml", state_dir=SD)
    assert cfg.server_url == "https://control.example.net:8443"
    assert cfg.server_host == "control.example.net"
    assert cfg.listen_addr == HostPort("127.0.0.1", 8443)
    assert cfg.metrics_listen_addr == HostPort("127.0.0.1", 9190)
    assert cfg.tls_cert_path == SD / "tls/cert.pem"
    assert cfg.tls_enabled
    assert cfg.noise.private_key_path == SD / "keys/noise.key"
    assert cfg.prefixes.v4 == ipaddress.IPv4Network("100.80.0.0/16")
    assert cfg.prefixes.allocation is AllocationStrategy.RANDOM
    d = cfg.derp
    assert (d.server.region_id, d.server.region_code, d.server.region_name) == (
        950,
        "lab",
        "Lab relay",
    )
    assert d.server.stun_listen_addr == HostPort("0.0.0.0", 3479)
    assert d.server.ipv4 == ipaddress.IPv4Address("192.0.2.10")
    assert d.paths == (Path("/etc/meshscale/derp.yaml"),)  # absolute paths stay absolute
    assert not d.auto_update_enabled
    assert d.update_frequency == timedelta(hours=6)
    assert cfg.node_expiry == timedelta(days=180)
    assert cfg.ephemeral_node_inactivity_timeout == timedelta(minutes=10)
    assert cfg.node_update_check_interval == timedelta(seconds=15)
    assert cfg.database.sqlite_path == SD / "data/control.sqlite"
    assert cfg.database.wal_autocheckpoint == 500
    assert cfg.log_level == "debug"
    assert cfg.log_format == "json"
    assert cfg.policy.mode == "database"
    assert cfg.policy.path is None
    assert cfg.dns.base_domain == "tailnet.example.org"
    assert not cfg.dns.override_local_dns
    assert cfg.dns.nameservers_global == ("192.0.2.53", "2001:db8::53")
    assert cfg.dns.nameservers_split == {"corp.example.org": ("10.1.0.53",)}
    assert [r.type for r in cfg.dns.extra_records] == ["A", "AAAA"]
    assert cfg.unix_socket == SD / "run/control.sock"
    assert cfg.randomize_client_port
    assert not cfg.taildrop_enabled
    assert cfg.trusted_proxies == (ipaddress.ip_network("10.1.0.0/16"),)
    opts = state_options(cfg)
    assert opts.prefix_v4 == cfg.prefixes.v4
    assert opts.node_expiry == timedelta(days=180)


def test_headscale_shaped_file_warnings() -> None:
    cfg = load_config(VECTORS / "config-headscale-shaped.yaml", state_dir=SD)
    text = "\n".join(cfg.warnings)
    assert "derp_mesh_secret: unknown key" in text
    assert "grpc_listen_addr: not supported" in text
    assert "acme_url: not supported" in text
    assert "database.gorm: not supported" in text
    # Empty/false values of unsupported keys are not worth a warning.
    assert "acme_email" not in text
    assert "grpc_allow_insecure" not in text
    # Every known key was consumed: nothing else is "unknown".
    assert sum("unknown key" in w for w in cfg.warnings) == 1


def test_unknown_nested_keys_are_warnings() -> None:
    cfg = config_from_mapping({"dns": {"magic_dns": True, "magik": 1}, "foo": {"bar": 2}}, SD)
    assert "dns.magik: unknown key, ignored" in cfg.warnings
    assert "foo.bar: unknown key, ignored" in cfg.warnings


def test_deprecated_ephemeral_key_still_works() -> None:
    cfg = config_from_mapping({"ephemeral_node_inactivity_timeout": "5m"}, SD)
    assert cfg.ephemeral_node_inactivity_timeout == timedelta(minutes=5)
    assert any("deprecated" in w for w in cfg.warnings)
    both = config_from_mapping(
        {
            "ephemeral_node_inactivity_timeout": "5m",
            "node": {"ephemeral": {"inactivity_timeout": "7m"}},
        },
        SD,
    )
    assert both.ephemeral_node_inactivity_timeout == timedelta(minutes=7)
    assert not any("unknown" in w for w in both.warnings)


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"server_url": "ftp://x"}, "server_url"),
        ({"server_url": "http://x/path"}, "server_url"),
        ({"listen_addr": "0.0.0.0:99999"}, "listen_addr"),
        ({"listen_addr": "nohostport"}, "listen_addr"),
        ({"prefixes": {"v4": "100.64.0.0/33"}}, "prefixes.v4"),
        ({"prefixes": {"v6": "100.64.0.0/10"}}, "prefixes.v6"),
        ({"prefixes": {"allocation": "clever"}}, "prefixes.allocation"),
        ({"prefixes": {"v4": "", "v6": ""}}, "prefixes"),
        ({"database": {"type": "postgres", "postgres": {"ssl": "maybe"}}}, "database.postgres.ssl"),
        ({"database": {"type": "postgres", "postgres": {"port": 0}}}, "database.postgres.port"),
        ({"database": {"type": "mysql"}}, "database.type"),
        ({"derp": {"server": {"enabled": "yes"}}}, "derp.server.enabled"),
        ({"derp": {"server": {"region_id": 0}}}, "derp.server.region_id"),
        ({"derp": {"server": {"ipv4": "2001:db8::1"}}}, "derp.server.ipv4"),
        ({"derp": {"urls": ["file:///x"]}}, "derp.urls"),
        ({"derp": {"update_frequency": "often"}}, "derp.update_frequency"),
        ({"dns": {"magic_dns": True, "base_domain": ""}}, "dns.base_domain"),
        (
            {"server_url": "http://hs.ts.example", "dns": {"base_domain": "ts.example"}},
            "dns.base_domain",
        ),
        ({"dns": {"nameservers": {"global": [1]}}}, "dns.nameservers.global"),
        ({"dns": {"nameservers": {"split": ["x"]}}}, "dns.nameservers.split"),
        (
            {"dns": {"extra_records": [{"name": "a", "type": "A", "value": "::1"}]}},
            "dns.extra_records[0]",
        ),
        (
            {"dns": {"extra_records": [{"name": "a", "type": "MX", "value": "1.2.3.4"}]}},
            "dns.extra_records[0].type",
        ),
        ({"tls_cert_path": "c.pem"}, "tls_cert_path/tls_key_path"),
        ({"policy": {"mode": "git"}}, "policy.mode"),
        ({"log": {"level": "chatty"}}, "log.level"),
        (
            {"node": {"ephemeral": {"inactivity_timeout": "10s"}}},
            "node.ephemeral.inactivity_timeout",
        ),
        ({"unix_socket_permission": "rwx"}, "unix_socket_permission"),
        ({"trusted_proxies": ["not-a-net"]}, "trusted_proxies"),
        ({"server_url": ["a"]}, "server_url"),
    ],
)
def test_bad_values_name_the_key(data: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_mapping(data, SD)
    message = str(info.value)
    assert message.startswith(f"config: {key}"), message
    assert "\n" not in message


def test_bad_yaml_is_one_line_with_location(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("server_url: [unterminated\nlisten_addr: :1\n")
    with pytest.raises(ConfigError, match=r"c\.yaml line \d+"):
        load_config(p)
    p.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="top level"):
        load_config(p)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")


def test_empty_file_is_defaults(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("# nothing\n")
    assert load_config(p, state_dir=SD).listen_addr == HostPort("", 8080)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0", 0),
        ("90s", 90),
        ("30m", 1800),
        ("1h30m", 5400),
        ("1.5h", 5400),
        ("2d", 172800),
        ("250ms", 0.25),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text).total_seconds() == seconds


@pytest.mark.parametrize("text", ["1x", "h", "1h 2m", "-5s", "5"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "want"),
    [
        (":8080", HostPort("", 8080)),
        ("127.0.0.1:1", HostPort("127.0.0.1", 1)),
        ("[::1]:443", HostPort("::1", 443)),
        ("example.org:80", HostPort("example.org", 80)),
    ],
)
def test_parse_host_port(text: str, want: HostPort) -> None:
    assert parse_host_port(text) == want


@pytest.mark.slow
@given(st.text(max_size=40))
def test_parse_host_port_only_raises_value_error(text: str) -> None:
    try:
        parse_host_port(text)
    except ValueError:
        pass


@given(st.text(max_size=40))
def test_parse_duration_only_raises_value_error(text: str) -> None:
    try:
        parse_duration(text)
    except ValueError:
        pass


@given(st.text(max_size=200))
def test_parse_yaml_only_raises_config_error(text: str) -> None:
    try:
        data = parse_yaml(text)
    except ConfigError:
        return
    try:
        config_from_mapping(data, SD)
    except ConfigError:
        pass


def test_postgres_settings_become_a_dsn() -> None:
    cfg = config_from_mapping(
        {
            "database": {
                "type": "postgres",
                "postgres": {
                    "host": "db.internal",
                    "port": 5433,
                    "name": "ctl",
                    "user": "ms",
                    "pass": "it's secret",
                    "ssl": True,
                    "max_open_conns": 10,
                },
            }
        },
        SD,
    )
    assert cfg.database.type == "postgres"
    assert cfg.database.postgres_dsn == (
        "host=db.internal port=5433 dbname=ctl user=ms password='it\\'s secret' sslmode=require"
    )
    assert "secret" not in repr(cfg.database)
    assert cfg.warnings == ()
    sqlite = config_from_mapping({"database": {"postgres": {"host": "x"}}}, SD)
    assert "database.postgres: ignored while database.type is sqlite" in sqlite.warnings
