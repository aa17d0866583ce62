"""``meshscale netcheck``: the daemon's latest network report (UDP, mapped address, DERP).

``--format=json`` (or ``json-line``) prints tailscale's netcheck.Report shape: its keys,
latencies as Go durations (integer nanoseconds), what we do not probe (port mapping, captive
portals) as null.
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from typing import Any

from .common import add_bool_flag
from .localclient import LocalClient


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("netcheck", help="print an analysis of local network conditions")
    p.add_argument(
        "--format",
        choices=FORMATS,
        default="",
        help='output format: empty (for human-readable), "json" or "json-line"',
    )
    add_bool_flag(p, "json", False, "same as --format=json")
    p.set_defaults(run=run)


FORMATS = ("", "json", "json-line")
_TRISTATES = ("MappingVariesByDestIP", "UPnP", "PMP", "PCP", "CaptivePortal")


def report_json(r: dict[str, Any]) -> dict[str, Any]:
    """The daemon's report in tailscale's netcheck.Report JSON shape."""

    def ns(lat: Any) -> dict[str, int]:
        if not isinstance(lat, dict):
            return {}
        return {str(k): round(float(v) * 1e9) for k, v in lat.items()
                if isinstance(v, int | float) and not isinstance(v, bool)}  # fmt: skip

    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    out: dict[str, Any] = {
        "Now": str(r.get("Now") or now),
        "UDP": bool(r.get("UDP")),
        "IPv6": bool(r.get("IPv6") or r.get("GlobalV6")),
        "IPv4": bool(r.get("IPv4") or r.get("GlobalV4")),
        "IPv6CanSend": bool(r.get("IPv6") or r.get("GlobalV6")),
        "IPv4CanSend": bool(r.get("IPv4") or r.get("GlobalV4")),
        "OSHasIPv6": bool(r.get("OSHasIPv6", r.get("IPv6"))),
        "ICMPv4": False,
    }
    for k in _TRISTATES:
        v = r.get(k)
        out[k] = v if isinstance(v, bool) else None
    pref = r.get("PreferredDERP")
    out["PreferredDERP"] = pref if isinstance(pref, int) and not isinstance(pref, bool) else 0
    out["RegionLatency"] = ns(r.get("RegionLatency"))
    out["RegionV4Latency"] = ns(r.get("RegionV4Latency"))
    out["RegionV6Latency"] = ns(r.get("RegionV6Latency"))
    out["GlobalV4"] = str(r.get("GlobalV4") or "")
    out["GlobalV6"] = str(r.get("GlobalV6") or "")
    # GlobalV4Counters/GlobalV6Counters (responses per mapped address) are omitempty in
    # tailscale; we print them only when the daemon counted.
    for k in ("GlobalV4Counters", "GlobalV6Counters"):
        if isinstance(r.get(k), dict) and r[k]:
            out[k] = r[k]
    return out


def port_mapping(r: dict[str, Any]) -> str:
    """Which port-mapping protocols the gateway offered, named and ordered as tailscale's
    netcheck prints them; "not checked" before the daemon's first probe ended."""
    if not any(isinstance(r.get(k), bool) for k in ("UPnP", "PMP", "PCP")):
        return "not checked"
    names = (("UPnP", "UPnP"), ("PMP", "NAT-PMP"), ("PCP", "PCP"))
    return ", ".join(label for key, label in names if r.get(key) is True)


def run(args: argparse.Namespace, client: LocalClient) -> int:
    r = client.get("netcheck")
    fmt = "json" if args.json and not args.format else args.format
    if fmt:
        rep = report_json(r)
        print(json.dumps(rep) if fmt == "json-line" else json.dumps(rep, indent="\t"))
        return 0
    print("\nReport:")
    print(f"\t* UDP: {str(bool(r.get('UDP'))).lower()}")
    v4 = r.get("GlobalV4") or ""
    print(f"\t* IPv4: {'yes, ' + v4 if v4 else 'no'}")
    v6 = r.get("GlobalV6") or ""
    print(f"\t* IPv6: {'yes, ' + v6 if v6 else 'no'}")
    mv = r.get("MappingVariesByDestIP")
    print(f"\t* MappingVariesByDestIP: {'' if mv is None else str(mv).lower()}")
    print(f"\t* PortMapping: {port_mapping(r)}")
    regions = r.get("RegionNames") or {}
    pref = r.get("PreferredDERP") or 0
    print(f"\t* Nearest DERP: {regions.get(str(pref), pref) if pref else 'unknown'}")
    lat = r.get("RegionLatency") or {}
    if lat:
        print("\t* DERP latency:")
        for rid, secs in sorted(lat.items(), key=lambda kv: kv[1]):
            print(f"\t\t- {rid}: {secs * 1000:.1f}ms ({regions.get(rid, rid)})")
    return 0
