"""meshscale-control configuration: a YAML file with Headscale's config.yaml keys.

Wherever a feature exists in both, the key is Headscale's (``server_url``,
``prefixes.v4``, ``derp.server.region_id``, ``dns.nameservers.global``, ...), so an
existing Headscale config mostly loads as is. The result is a tree of frozen
dataclasses; :func:`load_config` returns it with a list of warnings:

* unknown keys are warnings, never fatal (a typo is reported, not guessed at);
* known Headscale keys we do not implement (``grpc_listen_addr``, ACME, ``tuning.*``)
  are warnings naming what happens instead;
* a bad value is a :class:`ConfigError` whose one-line message names the key.

With no file at all the defaults run a usable server: state in ``/var/lib/meshscale-control``
(``--state-dir`` or ``$MESHSCALE_CONTROL_STATE_DIR``), plain HTTP on ``:8080``,
``server_url`` ``http://127.0.0.1:8080``, the embedded DERP and STUN on. Relative paths
in the file, and the default file names, resolve inside the state directory.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal
from urllib.parse import urlsplit

from meshscale.control.ipalloc import AllocationStrategy
from meshscale.control.oidcconfig import OIDCConfig, validate_oidc
from meshscale.control.yamlkeys import (
    MISSING,
    ConfigError,
    HostPort,
    Reader,
    parse_duration,
    parse_host_port,
    parse_yaml,
)

if TYPE_CHECKING:  # the state package is the server's: the admin CLI loads this module
    from meshscale.control.state import StateOptions

__all__ = [
    "CLIConfig",
    "ConfigError",
    "ControlConfig",
    "DERPConfig",
    "DERPServerConfig",
    "DNSConfig",
    "DatabaseConfig",
    "ExtraRecord",
    "HostPort",
    "NoiseConfig",
    "OIDCConfig",
    "PolicyConfig",
    "PrefixesConfig",
    "config_from_mapping",
    "load_config",
    "parse_duration",
    "parse_host_port",
    "parse_yaml",
    "state_options",
]

DEFAULT_STATE_DIR: Final = Path("/var/lib/meshscale-control")
STATE_DIR_ENV: Final = "MESHSCALE_CONTROL_STATE_DIR"
CONFIG_ENV: Final = "MESHSCALE_CONTROL_CONFIG"
MAX_CONFIG_BYTES: Final = 1 << 20  # a config file larger than this is a mistake
MIN_EPHEMERAL_TIMEOUT: Final = timedelta(seconds=65)  # map keep-alive 60 s + slack

LogLevel = Literal["trace", "debug", "info", "warn", "error", "fatal", "panic", "disabled"]
_LOG_LEVELS: Final = ("trace", "debug", "info", "warn", "error", "fatal", "panic", "disabled")

# Headscale keys that exist but that meshscale does not implement: key -> what happens.
_UNSUPPORTED: Final = {
    "grpc_listen_addr": "gRPC is not served; the CLI uses the REST API (/api/v1)",
    "grpc_allow_insecure": "gRPC is not served",
    "acme_url": "ACME is not supported; set tls_cert_path and tls_key_path",
    "acme_email": "ACME is not supported",
    "tls_letsencrypt_hostname": "Let's Encrypt is not supported; set tls_cert_path/key_path",
    "tls_letsencrypt_cache_dir": "Let's Encrypt is not supported",
    "tls_letsencrypt_challenge_type": "Let's Encrypt is not supported",
    "tls_letsencrypt_listen": "Let's Encrypt is not supported",
    "database.debug": "ignored (Headscale GORM setting)",
    "database.gorm": "ignored (Headscale GORM settings)",
    "tuning": "ignored (Headscale batcher tuning)",
    "node.routes": "ignored (HA route probing is not implemented)",
    "auto_update": "ignored",
    "preauth_keys": "ignored",
}


@dataclass(frozen=True, slots=True)
class NoiseConfig:
    private_key_path: Path


@dataclass(frozen=True, slots=True)
class PrefixesConfig:
    v4: ipaddress.IPv4Network | None
    v6: ipaddress.IPv6Network | None
    allocation: AllocationStrategy


@dataclass(frozen=True, slots=True)
class DatabaseConfig:
    type: Literal["sqlite", "postgres"]
    sqlite_path: Path
    write_ahead_log: bool = True
    wal_autocheckpoint: int = 1000  # pages; SQLite's default
    postgres_dsn: str | None = field(default=None, repr=False)  # may hold a password


@dataclass(frozen=True, slots=True)
class DERPServerConfig:
    enabled: bool
    region_id: int
    region_code: str
    region_name: str
    stun_listen_addr: HostPort | None
    private_key_path: Path
    automatically_add_embedded_derp_region: bool
    verify_clients: bool
    ipv4: ipaddress.IPv4Address | None
    ipv6: ipaddress.IPv6Address | None


@dataclass(frozen=True, slots=True)
class DERPConfig:
    server: DERPServerConfig
    urls: tuple[str, ...]
    paths: tuple[Path, ...]
    auto_update_enabled: bool
    update_frequency: timedelta


@dataclass(frozen=True, slots=True)
class ExtraRecord:
    name: str
    type: str
    value: str


@dataclass(frozen=True, slots=True)
class DNSConfig:
    magic_dns: bool
    base_domain: str
    override_local_dns: bool
    nameservers_global: tuple[str, ...]
    nameservers_split: Mapping[str, tuple[str, ...]]
    search_domains: tuple[str, ...]
    extra_records: tuple[ExtraRecord, ...]
    # Headscale's watched JSON file of DNSRecords; exclusive with extra_records.
    extra_records_path: Path | None = None


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    mode: Literal["file", "database"]
    path: Path | None


@dataclass(frozen=True, slots=True)
class CLIConfig:
    """Headscale's ``cli.*``: where the admin CLI connects when not given --url."""

    address: str = ""
    api_key: str = field(default="", repr=False)
    timeout: timedelta = timedelta(seconds=5)
    insecure: bool = False


@dataclass(frozen=True, slots=True)
class ControlConfig:
    state_dir: Path
    server_url: str
    listen_addr: HostPort
    metrics_listen_addr: HostPort | None
    tls_cert_path: Path | None
    tls_key_path: Path | None
    noise: NoiseConfig
    prefixes: PrefixesConfig
    database: DatabaseConfig
    derp: DERPConfig
    dns: DNSConfig
    policy: PolicyConfig
    log_level: LogLevel
    log_format: Literal["text", "json"]
    ephemeral_node_inactivity_timeout: timedelta
    node_expiry: timedelta | None
    node_update_check_interval: timedelta
    unix_socket: Path
    unix_socket_permission: int
    disable_check_updates: bool
    logtail_enabled: bool
    randomize_client_port: bool
    taildrop_enabled: bool
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    oidc: OIDCConfig
    cli: CLIConfig
    source: Path | None = None  # the file this came from, None for pure defaults
    warnings: tuple[str, ...] = ()
    # Admin console sign-in through OIDC: who is an admin (emails; IdP groups). Empty: nobody.
    console_admin_users: tuple[str, ...] = ()
    console_admin_groups: tuple[str, ...] = ()

    @property
    def tls_enabled(self) -> bool:
        return self.tls_cert_path is not None and self.tls_key_path is not None

    @property
    def server_host(self) -> str:
        return urlsplit(self.server_url).hostname or ""


# ---- loading ------------------------------------------------------------------------------


def default_state_dir(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    return Path(env.get(STATE_DIR_ENV) or DEFAULT_STATE_DIR)


def load_config(
    path: str | Path | None = None,
    *,
    state_dir: str | Path | None = None,
    env: Mapping[str, str] | None = None,
) -> ControlConfig:
    """Read ``path`` (None: defaults only) into a :class:`ControlConfig`.

    Raises ConfigError for unreadable files, bad YAML and bad values.
    """
    data: Mapping[str, Any] = {}
    source: Path | None = None
    if path is not None:
        source = Path(path)
        try:
            raw = source.read_bytes()
        except OSError as exc:
            raise ConfigError(f"config: cannot read {source}: {exc.strerror}") from exc
        if len(raw) > MAX_CONFIG_BYTES:
            raise ConfigError(f"config: {source} is larger than {MAX_CONFIG_BYTES} bytes")
        data = parse_yaml(raw, str(source))
    sdir = Path(state_dir) if state_dir is not None else default_state_dir(env)
    return config_from_mapping(data, sdir, source)


def config_from_mapping(
    data: Mapping[str, Any], state_dir: Path, source: Path | None = None
) -> ControlConfig:
    r = Reader(data)
    sd = state_dir
    for key, note in _UNSUPPORTED.items():
        value = r.get(key)
        if value is not MISSING and value not in (None, "", [], {}, False):
            r.warnings.append(f"{key}: not supported by meshscale; {note}")

    server_url = r.text("server_url", "http://127.0.0.1:8080").rstrip("/")
    parts = urlsplit(server_url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path:
        raise ConfigError(
            f"config: server_url: want http(s)://host[:port] without a path, got {server_url!r}"
        )

    listen = r.convert("listen_addr", parse_host_port, r.text("listen_addr", ":8080"))
    metrics_text = r.text("metrics_listen_addr", "")
    metrics = (
        r.convert("metrics_listen_addr", parse_host_port, metrics_text) if metrics_text else None
    )
    cert = r.opt_path("tls_cert_path", sd)
    tls_key = r.opt_path("tls_key_path", sd)
    if (cert is None) != (tls_key is None):
        raise ConfigError("config: tls_cert_path/tls_key_path: set both or neither")

    prefixes = _prefixes(r)
    database = _database(r, sd)
    derp = _derp(r, sd)
    dns = _dns(r, parts.hostname or "", sd)

    mode = r.text("policy.mode", "file")
    if mode not in ("file", "database"):
        raise ConfigError(f"config: policy.mode: want file or database, got {mode!r}")
    policy = PolicyConfig("file" if mode == "file" else "database", r.opt_path("policy.path", sd))

    level = r.text("log.level", "info").lower()
    if level not in _LOG_LEVELS:
        raise ConfigError(f"config: log.level: want one of {', '.join(_LOG_LEVELS)}")
    log_format = r.text("log.format", "text")
    if log_format not in ("text", "json"):
        raise ConfigError(f"config: log.format: want text or json, got {log_format!r}")

    # node.ephemeral.inactivity_timeout replaced ephemeral_node_inactivity_timeout.
    if r.has("ephemeral_node_inactivity_timeout") and not r.has(
        "node.ephemeral.inactivity_timeout"
    ):
        eph_key = "ephemeral_node_inactivity_timeout"
        r.warnings.append(f"{eph_key}: deprecated, use node.ephemeral.inactivity_timeout")
    else:
        eph_key = "node.ephemeral.inactivity_timeout"
        r.read.add("ephemeral_node_inactivity_timeout")
    ephemeral = r.duration(eph_key, "30m")
    if ephemeral < MIN_EPHEMERAL_TIMEOUT:
        raise ConfigError(
            f"config: {eph_key}: {ephemeral.total_seconds():g}s is too low, "
            f"must be at least {MIN_EPHEMERAL_TIMEOUT.total_seconds():g}s"
        )
    node_expiry = r.duration("node.expiry", "0")

    perm_text = r.text("unix_socket_permission", "0770")
    try:
        perm = int(perm_text.removeprefix("0o"), 8)
    except ValueError:
        perm = -1
    if not 0 <= perm <= 0o777:
        raise ConfigError(
            f"config: unix_socket_permission: want octal like 0770, got {perm_text!r}"
        )

    trusted = tuple(
        r.convert("trusted_proxies", lambda t: ipaddress.ip_network(t, strict=False), t)
        for t in r.strs("trusted_proxies")
    )

    cfg = ControlConfig(
        state_dir=sd,
        server_url=server_url,
        listen_addr=listen,
        metrics_listen_addr=metrics,
        tls_cert_path=cert,
        tls_key_path=tls_key,
        noise=NoiseConfig(r.path("noise.private_key_path", "noise_private.key", sd)),
        prefixes=prefixes,
        database=database,
        derp=derp,
        dns=dns,
        policy=policy,
        log_level=level,  # type: ignore[arg-type]
        log_format="text" if log_format == "text" else "json",
        ephemeral_node_inactivity_timeout=ephemeral,
        node_expiry=node_expiry or None,
        node_update_check_interval=r.duration("node_update_check_interval", "10s"),
        unix_socket=r.path("unix_socket", "control.sock", sd),
        unix_socket_permission=perm,
        disable_check_updates=r.flag("disable_check_updates", False),
        logtail_enabled=r.flag("logtail.enabled", False),
        randomize_client_port=r.flag("randomize_client_port", False),
        taildrop_enabled=r.flag("taildrop.enabled", True),
        trusted_proxies=trusted,
        oidc=_oidc(r, sd),
        cli=CLIConfig(
            address=r.text("cli.address", ""),
            api_key=r.text("cli.api_key", ""),
            timeout=r.duration("cli.timeout", "5s"),
            insecure=r.flag("cli.insecure", False),
        ),
        source=source,
        console_admin_users=r.strs("console.admin_users"),
        console_admin_groups=r.strs("console.admin_groups"),
    )
    warnings = list(r.warnings)
    warnings.extend(f"{k}: unknown key, ignored" for k in r.unknown_keys(_UNSUPPORTED))
    return _with_warnings(cfg, tuple(warnings))


def _with_warnings(cfg: ControlConfig, warnings: tuple[str, ...]) -> ControlConfig:
    return replace(cfg, warnings=warnings)


def _prefixes(r: Reader) -> PrefixesConfig:
    v4_text = r.text("prefixes.v4", "100.64.0.0/10")
    v6_text = r.text("prefixes.v6", "fd7a:115c:a1e0::/48")
    v4 = r.convert("prefixes.v4", ipaddress.IPv4Network, v4_text) if v4_text else None
    v6 = r.convert("prefixes.v6", ipaddress.IPv6Network, v6_text) if v6_text else None
    if v4 is None and v6 is None:
        raise ConfigError("config: prefixes: at least one of v4 and v6 is required")
    if v4 is not None and not v4.subnet_of(ipaddress.IPv4Network("100.64.0.0/10")):
        r.warnings.append(f"prefixes.v4: {v4} is outside 100.64.0.0/10; clients may not route it")
    alloc = r.text("prefixes.allocation", "sequential")
    try:
        strategy = AllocationStrategy(alloc)
    except ValueError:
        raise ConfigError(
            f"config: prefixes.allocation: want sequential or random, got {alloc!r}"
        ) from None
    return PrefixesConfig(v4, v6, strategy)


def _database(r: Reader, sd: Path) -> DatabaseConfig:
    kind = r.text("database.type", "sqlite")
    if kind in ("postgres", "postgresql"):
        return DatabaseConfig("postgres", sd / "db.sqlite", postgres_dsn=_postgres_dsn(r))
    if kind not in ("sqlite", "sqlite3"):
        raise ConfigError(f"config: database.type: want sqlite or postgres, got {kind!r}")
    if r.has("database.postgres"):
        r.read.add("database.postgres")
        r.warnings.append("database.postgres: ignored while database.type is sqlite")
    return DatabaseConfig(
        "sqlite",
        r.path("database.sqlite.path", "db.sqlite", sd),
        r.flag("database.sqlite.write_ahead_log", True),
        r.integer("database.sqlite.wal_autocheckpoint", 1000, 0, 1 << 30),
    )


def _postgres_dsn(r: Reader) -> str:
    """A libpq DSN from Headscale's database.postgres.* keys."""
    parts = {
        "host": r.text("database.postgres.host", "localhost"),
        "port": str(r.integer("database.postgres.port", 5432, 1, 65535)),
        "dbname": r.text("database.postgres.name", "meshscale"),
        "user": r.text("database.postgres.user", "meshscale"),
        "password": r.text("database.postgres.pass", ""),
    }
    ssl = r.raw("database.postgres.ssl", False)
    if isinstance(ssl, bool):
        parts["sslmode"] = "require" if ssl else "disable"
    elif isinstance(ssl, str) and ssl in (
        "disable",
        "allow",
        "prefer",
        "require",
        "verify-ca",
        "verify-full",
    ):
        parts["sslmode"] = ssl
    else:
        raise ConfigError("config: database.postgres.ssl: want true, false or a libpq sslmode")
    for key in ("max_open_conns", "max_idle_conns", "conn_max_idle_time_secs"):
        r.read.add(f"database.postgres.{key}")  # pool sizing: one connection is used
    return " ".join(f"{k}={_dsn_quote(v)}" for k, v in parts.items() if v != "")


def _dsn_quote(value: str) -> str:
    if value and not re.search(r"[\s'\\]", value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _derp(r: Reader, sd: Path) -> DERPConfig:
    stun_text = r.text("derp.server.stun_listen_addr", "0.0.0.0:3478")
    v4_text = r.text("derp.server.ipv4", "")
    v6_text = r.text("derp.server.ipv6", "")
    r.flag("derp.server.stun.enabled", True)
    server = DERPServerConfig(
        enabled=r.flag("derp.server.enabled", True),
        region_id=r.integer("derp.server.region_id", 999, 1, 1 << 31),
        region_code=r.text("derp.server.region_code", "meshscale"),
        region_name=r.text("derp.server.region_name", "meshscale embedded DERP"),
        stun_listen_addr=(
            r.convert("derp.server.stun_listen_addr", parse_host_port, stun_text)
            if stun_text
            else None
        ),
        private_key_path=r.path("derp.server.private_key_path", "derp_server_private.key", sd),
        automatically_add_embedded_derp_region=r.flag(
            "derp.server.automatically_add_embedded_derp_region", True
        ),
        verify_clients=r.flag("derp.server.verify_clients", True),
        ipv4=r.convert("derp.server.ipv4", ipaddress.IPv4Address, v4_text) if v4_text else None,
        ipv6=r.convert("derp.server.ipv6", ipaddress.IPv6Address, v6_text) if v6_text else None,
    )
    urls = r.strs("derp.urls")
    for url in urls:
        if urlsplit(url).scheme not in ("http", "https"):
            raise ConfigError(f"config: derp.urls: not an http(s) URL: {url[:80]!r}")
    return DERPConfig(
        server=server,
        urls=urls,
        paths=tuple(sd / Path(p).expanduser() for p in r.strs("derp.paths")),
        auto_update_enabled=r.flag("derp.auto_update_enabled", True),
        update_frequency=r.duration("derp.update_frequency", "3h"),
    )


def _dns(r: Reader, server_host: str, sd: Path) -> DNSConfig:
    magic = r.flag("dns.magic_dns", True)
    base = r.text("dns.base_domain", "meshscale.internal").strip(".").lower()
    if magic and not base:
        raise ConfigError("config: dns.base_domain: required when dns.magic_dns is true")
    if base and (server_host == base or server_host.endswith("." + base)):
        raise ConfigError(
            "config: dns.base_domain: server_url's host must not be inside the base domain "
            "(MagicDNS would answer for the control server)"
        )
    split_raw = r.raw("dns.nameservers.split", {})
    if not isinstance(split_raw, Mapping):
        raise ConfigError("config: dns.nameservers.split: want a mapping of domain: [servers]")
    split: dict[str, tuple[str, ...]] = {}
    for domain, servers in split_raw.items():
        if isinstance(servers, str):
            servers = [servers]
        if not isinstance(servers, list) or not all(isinstance(s, str) for s in servers):
            raise ConfigError(f"config: dns.nameservers.split.{domain}: want a list of servers")
        split[str(domain)] = tuple(servers)
    records_raw = r.raw("dns.extra_records", [])
    if not isinstance(records_raw, list):
        raise ConfigError("config: dns.extra_records: want a list of {name, type, value}")
    records = _records(records_raw, "dns.extra_records", "name", "type", "value")
    records_path = r.opt_path("dns.extra_records_path", sd)
    if records_path is not None and records:
        raise ConfigError(
            "config: dns.extra_records and dns.extra_records_path are mutually exclusive"
        )
    return DNSConfig(
        magic_dns=magic,
        base_domain=base,
        override_local_dns=r.flag("dns.override_local_dns", True),
        nameservers_global=r.strs("dns.nameservers.global"),
        nameservers_split=split,
        search_domains=r.strs("dns.search_domains"),
        extra_records=tuple(records),
        extra_records_path=records_path,
    )


def _records(raw: list[Any], where: str, kname: str, ktype: str, kvalue: str) -> list[ExtraRecord]:
    records: list[ExtraRecord] = []
    for i, rec in enumerate(raw):
        if not isinstance(rec, Mapping) or not {kname, kvalue} <= set(rec):
            raise ConfigError(f"config: {where}[{i}]: want {kname}, {ktype} and {kvalue}")
        rtype = str(rec.get(ktype) or "A").upper()
        if rtype not in ("A", "AAAA"):
            raise ConfigError(f"config: {where}[{i}].{ktype}: want A or AAAA")
        value = str(rec[kvalue])
        try:
            addr = ipaddress.ip_address(value)
        except ValueError:
            raise ConfigError(f"config: {where}[{i}].{kvalue}: not an IP address") from None
        if (addr.version == 4) != (rtype == "A"):
            raise ConfigError(f"config: {where}[{i}]: {rtype} record with {value}")
        records.append(ExtraRecord(str(rec[kname]), rtype, value))
    return records


def parse_extra_records(text: str, where: str = "dns.extra_records_path") -> tuple[
        ExtraRecord, ...] | None:  # fmt: skip
    """Headscale's extra_records_path format: a JSON array of {"Name", "Type", "Value"}.
    None for an empty file (Headscale ignores it; ``[]`` clears). Raises ConfigError."""
    if not text.strip():
        return None
    try:
        raw = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"{where}: not JSON: {exc}") from None
    if not isinstance(raw, list):
        raise ConfigError(f"{where}: want a JSON array of records")
    # De-duplicated, as Headscale's set; first occurrence keeps its place.
    return tuple(dict.fromkeys(_records(raw, where, "Name", "Type", "Value")))


def _oidc(r: Reader, sd: Path) -> OIDCConfig:
    extra = r.raw("oidc.extra_params", {})
    if not isinstance(extra, Mapping):
        raise ConfigError("config: oidc.extra_params: want a mapping")
    expiry_text = r.text("oidc.expiry", "")
    if expiry_text:
        # Headscale 0.29 made this key fatal; configs written for earlier releases still carry
        # it, so it keeps its old meaning (expiry of OIDC-registered nodes) with a warning.
        r.warnings.append(
            "oidc.expiry: Headscale's pre-0.29 key, honoured for OIDC-registered nodes; "
            "node.expiry is the current one"
        )
    cfg = OIDCConfig(
        issuer=r.text("oidc.issuer", ""),
        client_id=r.text("oidc.client_id", ""),
        client_secret=r.text("oidc.client_secret", ""),
        client_secret_path=r.opt_path("oidc.client_secret_path", sd),
        scope=r.strs("oidc.scope") or ("openid", "profile", "email"),
        extra_params={str(k): str(v) for k, v in extra.items()},
        allowed_domains=r.strs("oidc.allowed_domains"),
        allowed_users=r.strs("oidc.allowed_users"),
        allowed_groups=r.strs("oidc.allowed_groups"),
        email_verified_required=r.flag("oidc.email_verified_required", True),
        only_start_if_oidc_is_available=r.flag("oidc.only_start_if_oidc_is_available", True),
        use_expiry_from_token=r.flag("oidc.use_expiry_from_token", False),
        expiry=r.duration("oidc.expiry", expiry_text) if expiry_text else None,
        pkce_enabled=r.flag("oidc.pkce.enabled", False),
        pkce_method=r.text("oidc.pkce.method", "S256"),
        groups_claim=r.text("oidc.groups_claim", "groups"),
    )
    r.read.add("oidc.strip_email_domain")
    validate_oidc(cfg)
    if cfg.enabled and not cfg.only_start_if_oidc_is_available:
        r.warnings.append(
            "oidc.only_start_if_oidc_is_available: false has no effect: discovery runs at the "
            "first login, and an unreachable provider gives that login a 502"
        )
    return cfg


def state_options(cfg: ControlConfig) -> StateOptions:
    """The StateOptions for this configuration."""
    from meshscale.control.state import StateOptions

    return StateOptions(
        prefix_v4=cfg.prefixes.v4,
        prefix_v6=cfg.prefixes.v6,
        allocation=cfg.prefixes.allocation,
        ephemeral_inactivity_timeout=cfg.ephemeral_node_inactivity_timeout,
        node_expiry=cfg.node_expiry,
        server_host=(urlsplit(cfg.server_url).hostname or "").lower(),
    )
