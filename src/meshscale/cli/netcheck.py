"""``meshscale netcheck``: the daemon's latest network report (UDP, mapped address, DERP)."""

from __future__ import annotations

import argparse
import json

from .common import add_bool_flag
from .localclient import LocalClient


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("netcheck", help="print an analysis of local network conditions")
    add_bool_flag(p, "json", False, "print the report as JSON")
    p.set_defaults(run=run)


def run(args: argparse.Namespace, client: LocalClient) -> int:
    r = client.get("netcheck")
    if args.json:
        print(json.dumps(r, indent=2))
        return 0
    print("\nReport:")
    print(f"\t* UDP: {str(bool(r.get('UDP'))).lower()}")
    v4 = r.get("GlobalV4") or ""
    print(f"\t* IPv4: {'yes, ' + v4 if v4 else 'no'}")
    v6 = r.get("GlobalV6") or ""
    print(f"\t* IPv6: {'yes, ' + v6 if v6 else 'no'}")
    mv = r.get("MappingVariesByDestIP")
    print(f"\t* MappingVariesByDestIP: {'' if mv is None else str(mv).lower()}")
    regions = r.get("RegionNames") or {}
    pref = r.get("PreferredDERP") or 0
    print(f"\t* Nearest DERP: {regions.get(str(pref), pref) if pref else 'unknown'}")
    lat = r.get("RegionLatency") or {}
    if lat:
        print("\t* DERP latency:")
        for rid, secs in sorted(lat.items(), key=lambda kv: kv[1]):
            print(f"\t\t- {rid}: {secs * 1000:.1f}ms ({regions.get(rid, rid)})")
    return 0
