"""``meshscale-control users``: create, list, rename, delete."""

from __future__ import annotations

import argparse
from typing import Final
from urllib.parse import quote

from meshscale.control.cli.client import AdminClient, AdminError
from meshscale.control.cli.common import Noun, Parser, Subparsers, confirm, pick
from meshscale.control.cli.output import Column, Output, when

USER_COLUMNS: Final[list[Column]] = [
    ("ID", lambda u: u["id"]),
    ("Name", lambda u: u["name"]),
    ("Display name", lambda u: u["displayName"]),
    ("Email", lambda u: u["email"]),
    ("Created", lambda u: when(u["createdAt"])),
]


def users_list(
    c: AdminClient, o: Output, name: str | None, ident: str | None, tailnet: str | None = None
) -> None:
    query = {k: v for k, v in (("name", name), ("id", ident), ("tailnet", tailnet)) if v}
    payload = c.request("GET", "/api/v1/user", query=query)
    o.table(payload, payload["users"], USER_COLUMNS)


def user_id(c: AdminClient, ref: str, tailnet: str | None = None) -> str:
    """Resolve a user name (or id) to the id the path-based routes take; a name that
    exists in several tailnets needs ``tailnet``."""
    if ref.isdigit():
        return ref
    query = {"name": ref, **({"tailnet": tailnet} if tailnet else {})}
    users = c.request("GET", "/api/v1/user", query=query)["users"]
    if not users:
        raise AdminError(f"user {ref!r} not found")
    if len({u.get("tailnetId") for u in users}) > 1:
        raise AdminError(f"user {ref!r} exists in several tailnets: add --tailnet NAME")
    return str(users[0]["id"])


def users_create(
    c: AdminClient, o: Output, name: str, display: str, email: str, tailnet: str | None = None
) -> None:
    body = {"name": name, "displayName": display, "email": email}
    if tailnet:
        body["tailnet"] = tailnet
    payload = c.request("POST", "/api/v1/user", body)
    o.message(payload, f"User {payload['user']['name']!r} created (id {payload['user']['id']})")


def users_rename(c: AdminClient, o: Output, ref: str, new: str, tailnet: str | None = None) -> None:
    uid = user_id(c, ref, tailnet)
    payload = c.request("POST", f"/api/v1/user/{uid}/rename/{quote(new, safe='')}")
    o.message(payload, f"User {uid} renamed to {new!r}")


def users_delete(c: AdminClient, o: Output, ref: str, tailnet: str | None = None) -> None:
    uid = user_id(c, ref, tailnet)
    payload = c.request("DELETE", f"/api/v1/user/{uid}")
    o.message(payload, f"User {ref!r} deleted")


def add_verbs(us: Subparsers[Parser]) -> None:
    c = us.add_parser("create")
    c.add_argument("name")
    c.add_argument("-d", "--display-name", default="")
    c.add_argument("-e", "--email", default="")
    c.add_argument("--tailnet", help="the user's tailnet (default: default)")
    c = us.add_parser("list", aliases=["ls"])
    c.add_argument("-n", "--name")
    c.add_argument("-i", "--identifier")
    c.add_argument("--tailnet", help="only this tailnet's users")
    c = us.add_parser("rename")
    c.add_argument("old", nargs="?", help="current name or id")
    c.add_argument("new", nargs="?")
    c.add_argument("-i", "--identifier")
    c.add_argument("-n", "--name")
    c.add_argument("-r", "--new-name")
    c.add_argument("--tailnet", help="the user's tailnet (when the name is in several)")
    c = us.add_parser("delete", aliases=["destroy"])
    c.add_argument("user", nargs="?", help="name or id")
    c.add_argument("-i", "--identifier")
    c.add_argument("-n", "--name")
    c.add_argument("--tailnet", help="the user's tailnet (when the name is in several)")


def run(c: AdminClient, o: Output, args: argparse.Namespace, verb: str) -> None:
    if verb == "create":
        users_create(c, o, args.name, args.display_name, args.email, args.tailnet)
    elif verb == "list":
        users_list(c, o, args.name, args.identifier, args.tailnet)
    elif verb == "rename":
        old = pick(args.identifier, args.name, args.old, what="user (-i ID or -n NAME)")
        new = pick(args.new_name, args.new, what="new name (-r NAME)")
        users_rename(c, o, old, new, args.tailnet)
    else:
        ref = pick(args.identifier, args.name, args.user, what="user (-i or -n)")
        confirm(args, f"Delete user {ref!r}?")
        users_delete(c, o, ref, args.tailnet)


NOUN: Final = Noun("users", ("user",), "manage users", add_verbs, run)
