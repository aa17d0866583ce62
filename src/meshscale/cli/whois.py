"""``meshscale whois IP``: which machine and user own a Tailscale IP."""

from __future__ import annotations

import argparse
import ipaddress
import json

from .common import add_bool_flag
from .localclient import CLIError, LocalClient


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("whois", help="show the machine and user behind a Tailscale IP")
    add_bool_flag(p, "json", False, "print as JSON")
    p.add_argument("ip", help="a Tailscale IP (optionally IP:port)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace, client: LocalClient) -> int:
    text = args.ip
    if text.count(":") == 1 or text.startswith("["):
        text = text.rsplit(":", 1)[0].strip("[]")
    try:
        ip = str(ipaddress.ip_address(text))
    except ValueError as exc:
        raise CLIError(f"invalid IP address {args.ip!r}") from exc
    who = client.get("whois", addr=ip)
    if args.json:
        print(json.dumps(who, indent=2))
        return 0
    node = who.get("Node") or {}
    user = who.get("UserProfile") or {}
    print("Machine:")
    print(f"  Name:          {str(node.get('Name') or '').rstrip('.')}")
    print(f"  ID:            {node.get('StableID') or node.get('ID')}")
    print(f"  Addresses:     {node.get('Addresses') or []}")
    print("User:")
    print(f"  Name:     {user.get('LoginName', '')}")
    print(f"  ID:       {user.get('ID', 0)}")
    return 0
