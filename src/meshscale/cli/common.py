"""Helpers shared by the CLI verbs: Go-style flag values and peer lookup in a status."""

from __future__ import annotations

import argparse
import ipaddress
import re
from typing import Any

from .goflags import add_bool_flag, parse_bool
from .localclient import CLIError

__all__ = ["add_bool_flag", "parse_bool"]

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}

# Flags of tailscale's `up` that belong to later work. They are refused, never ignored.
UNSUPPORTED_UP_FLAGS = {
    "ssh": "meshscale SSH",
    "shields-up": "shields-up",
    "operator": "operator users",
    "netfilter-mode": "netfilter modes",
    "advertise-connector": "app connectors",
    "stateful-filtering": "stateful filtering",
    "qr": "QR codes",
    "unattended": "unattended mode",
    "nickname": "profile nicknames",
}


def parse_duration(text: str) -> float:
    """A Go duration (time.ParseDuration: "30s", "1m30s", "1.5h", "500ms"; bare seconds too)."""
    t = text.strip()
    try:
        v = float(t)
    except ValueError:
        parts = list(_DURATION_PART.finditer(t))
        if not parts or "".join(m.group(0) for m in parts) != t.lstrip("+"):
            msg = f"invalid duration {text!r} (want e.g. 1m30s)"
            raise argparse.ArgumentTypeError(msg) from None
        v = sum(float(m.group(1)) * _UNITS[m.group(2)] for m in parts)
    if v < 0:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}: negative")
    return v


def short_name(peer: dict[str, Any]) -> str:
    dns = str(peer.get("DNSName") or "")
    if dns:
        return dns.split(".", 1)[0]
    return str(peer.get("HostName") or "-")


def find_peer(status: dict[str, Any], target: str) -> dict[str, Any]:
    """A peer by IP, MagicDNS name (short or full) or host name."""
    peers = list((status.get("Peer") or {}).values())
    try:
        ip = str(ipaddress.ip_address(target))
    except ValueError:
        ip = None
    want = target.lower().rstrip(".")
    for p in peers:
        if ip is not None:
            if ip in (p.get("TailscaleIPs") or []):
                return dict(p)
            continue
        dns = str(p.get("DNSName") or "").lower().rstrip(".")
        if want in (dns, dns.split(".", 1)[0], str(p.get("HostName") or "").lower()):
            return dict(p)
    raise CLIError(f"no peer found with name or IP {target!r}")


def require_running(status: dict[str, Any]) -> None:
    state = status.get("BackendState")
    if state == "Running":
        return
    if state == "Stopped":
        raise CLIError("meshscale is stopped (run: meshscale up)")
    if state == "NeedsLogin":
        url = status.get("AuthURL") or ""
        raise CLIError("logged out" + (f"; log in at: {url}" if url else " (run: meshscale up)"))
    raise CLIError(f"meshscale is not running (state {state})")
