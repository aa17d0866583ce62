"""``meshscale ip [-4|-6] [peer]``: our (or a peer's) Tailscale IPs, one per line."""

from __future__ import annotations

import argparse
import ipaddress

from .common import find_peer, require_running
from .localclient import CLIError, LocalClient


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("ip", help="show Tailscale IP addresses")
    g = p.add_mutually_exclusive_group()
    g.add_argument("-4", dest="v4", action="store_true", help="only the IPv4 address")
    g.add_argument("-6", dest="v6", action="store_true", help="only the IPv6 address")
    g.add_argument("-1", dest="one", action="store_true", help="only the first address")
    p.add_argument("peer", nargs="?", help="a peer's name or IP instead of this node")
    p.set_defaults(run=run)


def run(args: argparse.Namespace, client: LocalClient) -> int:
    st = client.get("status")
    if args.peer:
        ips = find_peer(st, args.peer).get("TailscaleIPs") or []
    else:
        require_running(st)
        ips = st.get("TailscaleIPs") or []
    if args.v4:
        ips = [ip for ip in ips if ipaddress.ip_address(ip).version == 4][:1]
    elif args.v6:
        ips = [ip for ip in ips if ipaddress.ip_address(ip).version == 6][:1]
    elif args.one:
        ips = ips[:1]
    if not ips:
        raise CLIError("no matching IP address")
    for ip in ips:
        print(ip)
    return 0
