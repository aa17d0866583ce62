"""Typed reading of a YAML configuration tree by dotted key (``derp.server.region_id``).

:class:`Reader` remembers which keys were read, so the keys nobody read can be reported
as unknown. Every bad value raises :class:`ConfigError` with one line that names the key.
Also here: Go-style durations (``1h30m``) and ``host:port`` addresses, as Headscale's
config uses them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Final


class ConfigError(ValueError):
    """The configuration cannot be used. The message is one line naming the key."""


@dataclass(frozen=True, slots=True)
class HostPort:
    host: str  # "" means every address
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


_DURATION_RE: Final = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h|d)")
_DURATION_UNITS: Final = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
}


def parse_duration(text: str) -> timedelta:
    """Go-style durations (``90s``, ``30m``, ``1h30m``, ``0``), plus ``d`` for days."""
    text = text.strip()
    if text in ("0", ""):
        return timedelta(0)
    pos, total = 0, 0.0
    for m in _DURATION_RE.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    if pos != len(text) or pos == 0:
        raise ValueError(f"invalid duration {text[:40]!r} (want e.g. 30s, 15m, 1h30m)")
    return timedelta(seconds=total)


def parse_host_port(text: str, default_port: int | None = None) -> HostPort:
    """``host:port``, ``:port``, ``[v6]:port`` (or a bare host with ``default_port``)."""
    text = text.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        port_text = rest.removeprefix(":") if sep and rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    elif ":" not in text:
        host, port_text = text, ""
    else:
        raise ValueError(f"invalid address {text[:60]!r}: write IPv6 hosts as [addr]:port")
    if not port_text:
        if default_port is None:
            raise ValueError(f"missing port in {text[:60]!r}")
        port_text = str(default_port)
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"invalid port in {text[:60]!r}")
    return HostPort(host, int(port_text))


class Reader:
    """Typed access to the YAML tree; remembers which keys were read."""

    def __init__(self, data: Mapping[str, Any]) -> None:
        self.data = data
        self.read: set[str] = set()
        self.warnings: list[str] = []

    def has(self, key: str) -> bool:
        return self.get(key) is not MISSING

    def get(self, key: str) -> Any:
        """The raw value at a dotted key, or MISSING (does not count as read)."""
        node: Any = self.data
        for part in key.split("."):
            if not isinstance(node, Mapping) or part not in node:
                return MISSING
            node = node[part]
        return node

    def raw(self, key: str, default: Any) -> Any:
        self.read.add(key)
        value = self.get(key)
        return default if value is MISSING or value is None else value

    def text(self, key: str, default: str) -> str:
        value = self.raw(key, default)
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise ConfigError(f"config: {key}: want a string, got {_kind(value)}")
        return str(value)

    def flag(self, key: str, default: bool) -> bool:
        value = self.raw(key, default)
        if not isinstance(value, bool):
            raise ConfigError(f"config: {key}: want true or false, got {value!r:.40}")
        return value

    def integer(self, key: str, default: int, lo: int, hi: int) -> int:
        value = self.raw(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise ConfigError(f"config: {key}: want an integer in {lo}..{hi}, got {value!r:.40}")
        return value

    def duration(self, key: str, default: str) -> timedelta:
        value = self.raw(key, default)
        if isinstance(value, int) and not isinstance(value, bool):
            return timedelta(seconds=value)  # a bare number is seconds
        try:
            return parse_duration(self.text(key, default))
        except ValueError as exc:
            raise ConfigError(f"config: {key}: {exc}") from exc

    def strs(self, key: str) -> tuple[str, ...]:
        value = self.raw(key, [])
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"config: {key}: want a list of strings, got {_kind(value)}")
        return tuple(value)

    def path(self, key: str, default: str, base: Path) -> Path:
        return base / Path(self.text(key, default)).expanduser()

    def opt_path(self, key: str, base: Path) -> Path | None:
        text = self.text(key, "")
        return base / Path(text).expanduser() if text else None

    def convert(self, key: str, fn: Any, value: Any) -> Any:
        try:
            return fn(value)
        except ValueError as exc:
            raise ConfigError(f"config: {key}: {exc}") from exc

    def unknown_keys(self, known: Mapping[str, str]) -> list[str]:
        """Leaf keys never read and not under a ``known`` (documented, ignored) key."""
        out: list[str] = []

        def walk(node: Any, prefix: str) -> None:
            if prefix and (prefix in self.read or prefix in known or _under(prefix, known)):
                return
            if isinstance(node, Mapping) and node:
                for k, v in node.items():
                    walk(v, f"{prefix}.{k}" if prefix else str(k))
            elif prefix and not any(r.startswith(prefix + ".") for r in self.read):
                out.append(prefix)

        walk(self.data, "")
        return out


MISSING: Final = object()


def _under(key: str, table: Mapping[str, str]) -> bool:
    return any(key.startswith(k + ".") for k in table)


def _kind(value: Any) -> str:
    return type(value).__name__ if value is not None else "nothing"


def parse_yaml(raw: bytes | str, name: str = "<config>") -> Mapping[str, Any]:
    import yaml  # here: a CLI run without a config file (`version`, `--help`) skips PyYAML

    try:
        loaded = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"config: {name}{where}: {problem}") from exc
    if loaded is None:
        return {}
    if not isinstance(loaded, Mapping):
        raise ConfigError(f"config: {name}: the top level must be a mapping of keys")
    return loaded
