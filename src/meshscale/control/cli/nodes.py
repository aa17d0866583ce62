"""``meshscale-control nodes``: list, pending, register, and the per-node admin edits."""

from __future__ import annotations

import argparse
from typing import Any, Final
from urllib.parse import quote

from meshscale.control.cli.client import AdminClient, AdminError
from meshscale.control.cli.common import Noun, Parser, Subparsers, confirm, prefixes_arg, split
from meshscale.control.cli.output import Column, Output, expired, when, yes

NODE_COLUMNS: Final[list[Column]] = [
    ("ID", lambda n: n["id"]),
    ("Hostname", lambda n: n["name"]),
    ("Name", lambda n: n["givenName"]),
    ("User", lambda n: (n.get("user") or {}).get("name", "")),
    ("IP addresses", lambda n: ", ".join(n["ipAddresses"])),
    ("Tags", lambda n: ", ".join(n["tags"])),
    ("Online", lambda n: "online" if n["online"] else "offline"),
    ("Last seen", lambda n: when(n["lastSeen"])),
    ("Expired", lambda n: yes(expired(n["expiry"]))),
]
PENDING_COLUMNS: Final[list[Column]] = [
    ("Key", lambda r: r["id"]),
    ("Hostname", lambda r: r["hostname"]),
    ("Node key", lambda r: r["nodeKey"]),
    ("Expiration", lambda r: when(r["expiration"])),
]


def nodes_list(c: AdminClient, o: Output, user: str | None, tailnet: str | None = None) -> None:
    query = {k: v for k, v in (("user", user), ("tailnet", tailnet)) if v}
    payload = c.request("GET", "/api/v1/node", query=query or None)
    o.table(payload, payload["nodes"], NODE_COLUMNS)


def nodes_register(
    c: AdminClient, o: Output, user: str, key: str, tailnet: str | None = None
) -> None:
    query = {"user": user, "key": key, **({"tailnet": tailnet} if tailnet else {})}
    payload = c.request("POST", "/api/v1/node/register", query=query)
    node = payload["node"]
    o.message(
        payload,
        f"Node {node['givenName']!r} registered (id {node['id']}, "
        f"{', '.join(node['ipAddresses'])})",
    )


ROUTE_COLUMNS: Final[list[Column]] = [
    ("ID", lambda n: n["id"]),
    ("Hostname", lambda n: n["givenName"]),
    ("Approved", lambda n: ", ".join(n["approvedRoutes"])),
    ("Available", lambda n: ", ".join(n["availableRoutes"])),
    ("Serving (Primary)", lambda n: ", ".join(n["subnetRoutes"])),
]


def nodes_routes(c: AdminClient, o: Output, node_id: str | None) -> None:
    """Headscale's ``nodes list-routes``: the nodes that have routes, with them."""
    nodes = c.request("GET", "/api/v1/node")["nodes"]
    if node_id is not None:
        nodes = [n for n in nodes if str(n["id"]) == node_id]
    nodes = [n for n in nodes if n["approvedRoutes"] or n["availableRoutes"]]
    o.table(nodes, nodes, ROUTE_COLUMNS)


SHARE_COLUMNS: Final[list[Column]] = [
    ("Node ID", lambda s: s["nodeId"]),
    ("Node", lambda s: s["node"]),
    ("Shared with", lambda s: (s.get("user") or {}).get("name", "")),
    ("Since", lambda s: when(s["createdAt"])),
]


def nodes_shares(c: AdminClient, o: Output, node_id: str | None, user: str | None) -> None:
    """Node sharing (issue #16): which node is shared with which user of another tailnet."""
    query = {k: v for k, v in (("node", node_id), ("user", user)) if v}
    payload = c.request("GET", "/api/v1/share", query=query or None)
    o.table(payload, payload["shares"], SHARE_COLUMNS)


def nodes_pending(c: AdminClient, o: Output) -> None:
    payload = c.request("GET", "/api/v1/registration")
    o.table(payload, payload["registrations"], PENDING_COLUMNS)


def node_action(
    c: AdminClient,
    o: Output,
    node_id: str,
    method: str,
    suffix: str,
    done: str,
    body: dict[str, Any] | None = None,
) -> None:
    if not node_id.isdigit():
        raise AdminError(f"node identifier must be a number, got {node_id[:30]!r}")
    payload = c.request(method, f"/api/v1/node/{node_id}{suffix}", body)
    o.message(payload, done)


def add_verbs(ns: Subparsers[Parser]) -> None:
    c = ns.add_parser("list", aliases=["ls"])
    c.add_argument("-u", "--user")
    c.add_argument("--tailnet", help="only this tailnet's nodes")
    c = ns.add_parser("list-routes", aliases=["routes"], help="routes nodes announce/approve")
    c.add_argument("-i", "--identifier", help="node id (default: every node)")
    ns.add_parser("pending", help="list registrations waiting for `nodes register`")
    ns.add_parser("backfillips", help="give nodes the addresses of newly configured prefixes")
    c = ns.add_parser("register")
    c.add_argument("-u", "--user", required=True)
    c.add_argument("--tailnet", help="the user's tailnet (when the name is in several)")
    c.add_argument("-k", "--key", required=True, help="registration id (or the AuthURL)")
    c = ns.add_parser("list-shares", aliases=["shares"], help="nodes shared across tailnets")
    c.add_argument("-i", "--identifier", help="node id (default: every node)")
    c.add_argument("-u", "--user", help="only shares to this user")
    for verb in ("delete", "expire", "rename", "tag", "move", "approve-routes", "share", "unshare"):
        c = ns.add_parser(verb)
        c.add_argument("-i", "--identifier", required=True, help="node id")
        if verb == "rename":
            c.add_argument("new_name")
        elif verb == "tag":
            c.add_argument(
                "-t",
                "--tags",
                action="append",
                default=[],
                help="tag:name (repeat or comma-separate; none clears)",
            )
        elif verb in ("move", "share", "unshare"):
            c.add_argument("-u", "--user", required=True, help="user name or id")
        elif verb == "approve-routes":
            c.add_argument(
                "-r", "--routes", default="", type=prefixes_arg, help="comma-separated prefixes"
            )
        elif verb == "expire":
            c.add_argument("-e", "--expiry", help="RFC 3339 time (default now)")
            c.add_argument("--disable", action="store_true", help="the node key never expires")


def run(c: AdminClient, o: Output, args: argparse.Namespace, verb: str) -> None:
    if verb == "list":
        nodes_list(c, o, args.user, args.tailnet)
        return
    if verb == "register":
        nodes_register(c, o, args.user, args.key, args.tailnet)
        return
    if verb in ("list-routes", "routes"):
        nodes_routes(c, o, args.identifier)
        return
    if verb == "pending":
        nodes_pending(c, o)
        return
    if verb in ("list-shares", "shares"):
        nodes_shares(c, o, args.identifier, args.user)
        return
    if verb == "backfillips":
        confirm(args, "Backfill addresses from the configured prefixes for every node?")
        payload = c.request("POST", "/api/v1/node/backfillips", query={"confirmed": "true"})
        o.message(payload, "\n".join(payload["changes"]) or "no node needed new addresses")
        return
    nid = args.identifier
    if verb == "delete":
        confirm(args, f"Delete node {nid}?")
        node_action(c, o, nid, "DELETE", "", f"Node {nid} deleted")
    elif verb == "expire":
        if args.disable:
            if args.expiry:
                raise AdminError("--disable and --expiry exclude each other")
            node_action(
                c, o, nid, "POST", "/expire", f"Node {nid} expiry disabled", {"disableExpiry": True}
            )
        else:
            body = {"expiry": args.expiry} if args.expiry else {}
            node_action(c, o, nid, "POST", "/expire", f"Node {nid} expired", body)
    elif verb == "rename":
        node_action(
            c,
            o,
            nid,
            "POST",
            f"/rename/{quote(args.new_name, safe='')}",
            f"Node {nid} renamed to {args.new_name!r}",
        )
    elif verb == "tag":
        node_action(c, o, nid, "POST", "/tags", f"Node {nid} tagged", {"tags": split(args.tags)})
    elif verb == "move":
        node_action(
            c, o, nid, "POST", "/user", f"Node {nid} moved to {args.user!r}", {"user": args.user}
        )
    elif verb in ("share", "unshare"):
        done = f"Node {nid} {'shared with' if verb == 'share' else 'no longer shared with'}"
        node_action(c, o, nid, "POST", f"/{verb}", f"{done} {args.user!r}", {"user": args.user})
    elif verb == "approve-routes":
        node_action(
            c,
            o,
            nid,
            "POST",
            "/approve_routes",
            f"Routes of node {nid} set",
            {"routes": split([args.routes])},
        )


NOUN: Final = Noun("nodes", ("node",), "manage nodes", add_verbs, run)
