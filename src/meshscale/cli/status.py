"""``meshscale status``: tailscale's table, or ``--json`` with the same JSON shape.

Table columns: first Tailscale IP, short name, owner, OS, then the connection:
``active; direct IP:PORT`` / ``active; relay "REGION"`` / ``idle`` / ``offline``, followed by
``tx N rx M`` once the peer has carried traffic. Our own line ends with ``-``.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from .common import add_bool_flag, require_running, short_name
from .localclient import LocalClient


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("status", help="show the state of the node and its peers")
    add_bool_flag(p, "json", False, "print the full status as JSON")
    add_bool_flag(p, "peers", True, "show peers")
    add_bool_flag(p, "self", True, "show this node")
    add_bool_flag(p, "active", False, "show only peers with recent traffic")
    p.set_defaults(run=run)


def _owner(status: dict[str, Any], peer: dict[str, Any]) -> str:
    # A node shared in from another tailnet shows its sharer (tailscale cli/status.go).
    uid = peer.get("AltSharerUserID") or peer.get("UserID", 0)
    user = (status.get("User") or {}).get(str(uid)) or {}
    login = str(user.get("LoginName") or "")
    return login.split("@", 1)[0] + "@" if login else "-"


def connection(peer: dict[str, Any]) -> str:
    """The last column of a peer's line (tailscale's status wording)."""
    if not peer.get("Online"):
        return "offline"
    if not peer.get("Active"):
        out = "idle"
    elif peer.get("CurAddr"):
        out = f"active; direct {peer['CurAddr']}"
    elif peer.get("Relay"):
        out = f'active; relay "{peer["Relay"]}"'
    else:
        out = "active"
    tx, rx = int(peer.get("TxBytes") or 0), int(peer.get("RxBytes") or 0)
    if peer.get("ExitNode"):
        out += "; exit node"
    elif peer.get("ExitNodeOption"):
        out += "; offers exit node"
    if tx or rx:
        out += f", tx {tx} rx {rx}"
    return out


def rows(status: dict[str, Any], *, peers: bool = True, self_: bool = True,
         active: bool = False) -> list[tuple[str, str, str, str, str]]:  # fmt: skip
    out: list[tuple[str, str, str, str, str]] = []

    def line(p: dict[str, Any], last: str) -> tuple[str, str, str, str, str]:
        ips = p.get("TailscaleIPs") or ["-"]
        return (str(ips[0]), short_name(p), _owner(status, p), str(p.get("OS") or "-"), last)

    me = status.get("Self")
    if self_ and me:
        out.append(line(me, "-"))
    if peers:
        ps = sorted((status.get("Peer") or {}).values(), key=lambda p: short_name(p))
        for p in ps:
            if active and not p.get("Active"):
                continue
            out.append(line(p, connection(p)))
    return out


def run(args: argparse.Namespace, client: LocalClient) -> int:
    st = client.get("status")
    if args.json:  # as tailscale: --peers=false asks for no peers, --active drops idle ones
        if not args.peers:
            st["Peer"] = None
        elif args.active and st.get("Peer"):
            st["Peer"] = {k: p for k, p in st["Peer"].items() if p.get("Active")}
        print(json.dumps(st, indent=2))
        return 0
    require_running(st)
    from rich.console import Console  # only when printing the table: rich costs ~80 ms
    from rich.table import Table
    from rich.text import Text

    table = Table(box=None, show_header=False, pad_edge=False, padding=(0, 2, 0, 0))
    for _ in range(5):
        table.add_column(no_wrap=True)
    for r in rows(st, peers=args.peers, self_=args.self, active=args.active):
        table.add_row(*(Text(c) for c in r))
    Console(highlight=False, soft_wrap=True, width=200).print(table)
    health = st.get("Health") or []
    if health:  # as upstream: problems the user should know about, after the table
        print("\n# Health check:")
        for h in health:
            print(f"#     - {h}")
    return 0
