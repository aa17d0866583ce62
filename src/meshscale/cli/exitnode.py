"""``meshscale exit-node list`` and ``suggest`` (tailscale's ``exit-node`` verb).

``list`` shows the peers that offer an exit node (both /0s in their AllowedIPs, so approved
by control): IP, name, owner and whether it is online or in use. ``suggest`` names one:
the online exit node we are using, else the online one with a direct path, else the first
online one by name (tailscale ranks by DERP latency; we have no latency per peer yet).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from .common import require_running, short_name
from .goflags import add_bool_flag
from .localclient import CLIError, LocalClient


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("exit-node", help="show exit nodes")
    verbs = p.add_subparsers(dest="exit_verb", metavar="{list,suggest}")
    lp = verbs.add_parser("list", help="list the exit nodes this node may use")
    add_bool_flag(lp, "json", False, "print JSON")
    sp = verbs.add_parser("suggest", help="suggest an exit node")
    add_bool_flag(sp, "json", False, "print JSON")
    p.set_defaults(run=run, json=False)


def exit_nodes(status: dict[str, Any]) -> list[dict[str, Any]]:
    peers = [p for p in (status.get("Peer") or {}).values() if p.get("ExitNodeOption")]
    return sorted(peers, key=short_name)


def suggest(status: dict[str, Any]) -> dict[str, Any] | None:
    online = [p for p in exit_nodes(status) if p.get("Online")]
    for pick in (
        [p for p in online if p.get("ExitNode")],
        [p for p in online if p.get("CurAddr")],
        online,
    ):
        if pick:
            return pick[0]
    return None


def run(args: argparse.Namespace, client: LocalClient) -> int:
    st = client.get("status")
    require_running(st)
    if args.exit_verb == "suggest":
        best = suggest(st)
        if best is None:
            raise CLIError("no exit node is available (none offered, approved and online)")
        ip = (best.get("TailscaleIPs") or ["-"])[0]
        if args.json:
            print(json.dumps({"ID": best.get("ID"), "Name": best.get("DNSName"), "IP": ip}))
        else:
            print(f"Suggested exit node: {short_name(best)} ({ip})")
            print(f"To accept this suggestion, use: meshscale set --exit-node={ip}")
        return 0
    if args.exit_verb != "list":
        raise CLIError("usage: meshscale exit-node {list,suggest}", code=2)
    nodes = exit_nodes(st)
    if args.json:
        print(json.dumps(nodes, indent=2))
        return 0
    if not nodes:
        print("No exit nodes found.")
        return 0
    print(f"{'IP':<18}{'HOSTNAME':<24}STATUS")
    for p in nodes:
        state = "selected" if p.get("ExitNode") else ("-" if p.get("Online") else "offline")
        print(f"{(p.get('TailscaleIPs') or ['-'])[0]:<18}{short_name(p):<24}{state}")
    return 0
