"""``meshscale-control preauthkeys``: create, list, expire, delete."""

from __future__ import annotations

import argparse
from typing import Any, Final

from meshscale.control.cli.client import AdminClient
from meshscale.control.cli.common import (
    Noun,
    Parser,
    Subparsers,
    UsageError,
    duration_arg,
    expiration_from,
    split,
)
from meshscale.control.cli.output import Column, Output, when, yes

PREAUTH_COLUMNS: Final[list[Column]] = [
    ("ID", lambda k: k["id"]),
    ("Key", lambda k: k["key"]),
    ("User", lambda k: (k.get("user") or {}).get("name", "")),
    ("Reusable", lambda k: yes(k["reusable"])),
    ("Ephemeral", lambda k: yes(k["ephemeral"])),
    ("Used", lambda k: yes(k["used"])),
    ("Expiration", lambda k: when(k["expiration"])),
    ("Created", lambda k: when(k["createdAt"])),
    ("Tags", lambda k: ", ".join(k["aclTags"])),
]


def preauthkeys_list(
    c: AdminClient, o: Output, user: str | None, tailnet: str | None = None
) -> None:
    query = {k: v for k, v in (("user", user), ("tailnet", tailnet)) if v}
    payload = c.request("GET", "/api/v1/preauthkey", query=query or None)
    o.table(payload, payload["preAuthKeys"], PREAUTH_COLUMNS)


def preauthkeys_create(
    c: AdminClient,
    o: Output,
    user: str,
    reusable: bool,
    ephemeral: bool,
    expiration: str | None,
    tags: list[str],
    tailnet: str | None = None,
) -> None:
    """The key admits nodes into the user's tailnet; ``tailnet`` only picks the user
    when its name is in several."""
    body: dict[str, Any] = {
        "user": user,
        "reusable": reusable,
        "ephemeral": ephemeral,
        "aclTags": tags,
    }
    if tailnet:
        body["tailnet"] = tailnet
    exp = expiration_from(expiration or "1h")
    if exp is not None:
        body["expiration"] = exp
    payload = c.request("POST", "/api/v1/preauthkey", body)
    o.message(payload, payload["preAuthKey"]["key"])


def preauthkeys_expire(c: AdminClient, o: Output, key_id: str | None, key: str | None) -> None:
    body = {"id": key_id} if key_id else {"key": key or ""}
    payload = c.request("POST", "/api/v1/preauthkey/expire", body)
    o.message(payload, "Key expired")


def add_verbs(ps: Subparsers[Parser]) -> None:
    c = ps.add_parser("create")
    c.add_argument("-u", "--user", required=True)
    c.add_argument("--reusable", action="store_true")
    c.add_argument("--ephemeral", action="store_true")
    c.add_argument(
        "-e", "--expiration", default="1h", type=duration_arg, help="lifetime, e.g. 24h (0: never)"
    )
    c.add_argument("--tags", action="append", default=[], help="tag:name (comma-separated)")
    c.add_argument("--tailnet", help="the user's tailnet (when the name is in several)")
    c = ps.add_parser("list", aliases=["ls"])
    c.add_argument("-u", "--user")
    c.add_argument("--tailnet", help="only this tailnet's keys")
    for verb in ("expire", "delete"):
        c = ps.add_parser(verb)
        c.add_argument("key", nargs="?", help="the key (or its prefix)")
        c.add_argument("--id")
        c.add_argument("-u", "--user", help="accepted for Headscale parity")


def run(c: AdminClient, o: Output, args: argparse.Namespace, verb: str) -> None:
    if verb == "create":
        preauthkeys_create(
            c,
            o,
            args.user,
            args.reusable,
            args.ephemeral,
            args.expiration,
            split(args.tags),
            args.tailnet,
        )
    elif verb == "list":
        preauthkeys_list(c, o, args.user, args.tailnet)
    else:
        if not (args.id or args.key):
            raise UsageError(f"preauthkeys {verb} needs --id ID or the KEY")
        if verb == "delete":
            query = {"id": args.id} if args.id else {"key": args.key}
            o.message(c.request("DELETE", "/api/v1/preauthkey", query=query), "Key deleted")
        else:
            preauthkeys_expire(c, o, args.id, args.key)


NOUN: Final = Noun("preauthkeys", ("preauthkey",), "manage pre-auth keys", add_verbs, run)
