"""``meshscale dns status [--all] [--json]`` and ``meshscale dns query NAME [TYPE]``
(tailscale's `dns status` and `dns query` verbs, over the local API)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from .common import add_bool_flag
from .localclient import CLIError, LocalClient


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("dns", help="diagnose the MagicDNS configuration")
    verbs = p.add_subparsers(dest="dns_verb", metavar="{status,query}")
    st = verbs.add_parser("status", help="show the DNS configuration in use")
    add_bool_flag(st, "all", False, "also show counters")
    add_bool_flag(st, "json", False, "print as JSON")
    st.set_defaults(run=run_status)
    q = verbs.add_parser("query", help="ask quad-100 (100.100.100.100) for a name")
    add_bool_flag(q, "json", False, "print as JSON")
    q.add_argument("name", help="a DNS name")
    q.add_argument("type", nargs="?", default="A", help="record type (default A)")
    q.set_defaults(run=run_query)
    p.set_defaults(run=run_status)


def _list(title: str, items: list[str]) -> None:
    print(f"{title}:")
    for i in items or []:
        print(f"  - {i}")
    if not items:
        print("  (none)")
    print()


def run_status(args: argparse.Namespace, client: LocalClient) -> int:
    dns = client.get("dns-status")
    if getattr(args, "json", False):
        print(json.dumps(dns, indent=2))
        return 0
    st = client.get("status")
    suffix = st.get("MagicDNSSuffix") or ""
    print("=== 'Use Tailscale DNS' status ===\n")
    if dns.get("AcceptDNS"):
        print("Tailscale DNS: enabled.\n")
    else:
        print("Tailscale DNS: disabled.\n\n(Run 'meshscale set --accept-dns=true' to start "
              "sending DNS queries to the Tailscale DNS resolver.)\n")  # fmt: skip
    print("=== MagicDNS configuration ===\n")
    if dns.get("MagicDNS"):
        print(f"MagicDNS: enabled tailnet-wide (suffix = {suffix}).\n")
        print("Other devices in your tailnet can reach this device at "
              f"{str((st.get('Self') or {}).get('DNSName') or '').rstrip('.')}\n")  # fmt: skip
    else:
        print("MagicDNS: disabled tailnet-wide.\n")
    _list("Resolvers (in order of preference)", dns.get("DefaultResolvers") or [])
    routes = dns.get("SplitDNSRoutes") or {}
    _list("Split DNS Routes",
          [f"{k.rstrip('.')} -> {', '.join(v)}" for k, v in sorted(routes.items())])  # fmt: skip
    _list("Fallback Resolvers", dns.get("FallbackResolvers") or [])
    _list("Search Domains", dns.get("SearchDomains") or [])
    _list("Certificate Domains", dns.get("CertDomains") or [])
    recs = dns.get("ExtraRecords") or []
    _list("Additional DNS Records",
          [f"{r['Name']} {r.get('Type') or 'A'} {r['Value']}" for r in recs])  # fmt: skip
    os_cfg: dict[str, Any] = dns.get("OSConfig") or {}
    state = "in use" if os_cfg.get("Active") else "not changed by meshscale"
    print(f"System DNS configuration: {os_cfg.get('Mode')} mode, {os_cfg.get('Path')} "
          f"({state}).")  # fmt: skip
    for h in dns.get("Health") or []:
        print(f"Health: {h}")
    if args.all:
        print()
        _list("Counters", [f"{k}: {v}" for k, v in sorted((dns.get("Stats") or {}).items())])
    return 0


def run_query(args: argparse.Namespace, client: LocalClient) -> int:
    res = client.get("dns-query", name=args.name, type=args.type)
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    print(f'DNS query for "{args.name}" ({res.get("Type")}) using internal resolver:')
    ups = res.get("Resolvers") or []
    if ups:
        print(f"Forwarding to resolver(s): {', '.join(ups)}")
    print(f"Response code: {res.get('Rcode')}")
    answers = res.get("Answers") or []
    if answers:
        print()
        w = max(len(a["Name"]) for a in answers)
        print(f"{'Name':<{w}}  {'TTL':>6}  {'Type':<5}  Value")
        for a in answers:
            print(f"{a['Name']:<{w}}  {a['TTL']:>6}  {a['Type']:<5}  {a['Value']}")
    if res.get("Rcode") not in ("NOERROR", "NXDOMAIN"):
        raise CLIError(f"query for {args.name} failed: {res.get('Rcode')}")
    return 0
