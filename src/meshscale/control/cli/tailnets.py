"""``meshscale-control tailnets``: create, list, rename, delete (issue #16).

Tailnet ``default`` always exists; ``delete`` refuses a tailnet that still has users (the
server says how many users and nodes are left). Other commands take ``--tailnet NAME``:
``users create``, the ``list`` of users, nodes, pre-auth keys and API keys,
``apikeys create`` (a key scoped to that tailnet) and ``policy``.
"""

from __future__ import annotations

import argparse
from typing import Final
from urllib.parse import quote

from meshscale.control.cli.client import AdminClient
from meshscale.control.cli.common import Noun, Parser, Subparsers, confirm
from meshscale.control.cli.output import Column, Output, when

TAILNET_COLUMNS: Final[list[Column]] = [
    ("ID", lambda t: t["id"]),
    ("Name", lambda t: t["name"]),
    ("Users", lambda t: str(t["users"])),
    ("Nodes", lambda t: str(t["nodes"])),
    ("Created", lambda t: when(t["createdAt"])),
]


def tailnets_list(c: AdminClient, o: Output) -> None:
    payload = c.request("GET", "/api/v1/tailnet")
    o.table(payload, payload["tailnets"], TAILNET_COLUMNS)


def tailnets_create(c: AdminClient, o: Output, name: str) -> None:
    payload = c.request("POST", "/api/v1/tailnet", {"name": name})
    t = payload["tailnet"]
    o.message(payload, f"Tailnet {t['name']!r} created (id {t['id']})")


def tailnets_rename(c: AdminClient, o: Output, old: str, new: str) -> None:
    path = f"/api/v1/tailnet/{quote(old, safe='')}/rename/{quote(new, safe='')}"
    payload = c.request("POST", path)
    o.message(payload, f"Tailnet {old!r} renamed to {new!r}")


def tailnets_delete(c: AdminClient, o: Output, name: str) -> None:
    payload = c.request("DELETE", f"/api/v1/tailnet/{quote(name, safe='')}")
    o.message(payload, f"Tailnet {name!r} deleted")


def add_verbs(ts: Subparsers[Parser]) -> None:
    c = ts.add_parser("create", help="create a tailnet")
    c.add_argument("name")
    ts.add_parser("list", aliases=["ls"], help="list tailnets with their user and node counts")
    c = ts.add_parser("rename", help="rename a tailnet")
    c.add_argument("old")
    c.add_argument("new")
    c = ts.add_parser("delete", help="delete an empty tailnet")
    c.add_argument("name")


def run(c: AdminClient, o: Output, args: argparse.Namespace, verb: str) -> None:
    if verb == "create":
        tailnets_create(c, o, args.name)
    elif verb == "list":
        tailnets_list(c, o)
    elif verb == "rename":
        tailnets_rename(c, o, args.old, args.new)
    else:
        confirm(args, f"Delete tailnet {args.name!r}?")
        tailnets_delete(c, o, args.name)


NOUN: Final = Noun("tailnets", ("tailnet",), "manage tailnets (several on one server)",
                   add_verbs, run)  # fmt: skip
