"""``meshscale-control apikeys``: create, list, expire, delete."""

from __future__ import annotations

import argparse
from typing import Final
from urllib.parse import quote

from meshscale.control.cli.client import AdminClient, AdminError
from meshscale.control.cli.common import (
    Noun,
    Parser,
    Subparsers,
    UsageError,
    duration_arg,
    expiration_from,
)
from meshscale.control.cli.output import Column, Output, when

APIKEY_COLUMNS: Final[list[Column]] = [
    ("ID", lambda k: k["id"]),
    ("Prefix", lambda k: k["prefix"]),
    ("Expiration", lambda k: when(k["expiration"])),
    ("Created", lambda k: when(k["createdAt"])),
    ("Last seen", lambda k: when(k["lastSeen"])),
    ("Tailnet", lambda k: str(k.get("tailnetId") or "(server admin)")),
]


def apikeys_list(c: AdminClient, o: Output, tailnet: str | None = None) -> None:
    payload = c.request("GET", "/api/v1/apikey", query={"tailnet": tailnet} if tailnet else None)
    o.table(payload, payload["apiKeys"], APIKEY_COLUMNS)


def apikeys_create(
    c: AdminClient, o: Output, expiration: str | None, tailnet: str | None = None
) -> None:
    """``tailnet``: a key that sees and changes only that tailnet; none: a server admin
    key."""
    body = {"tailnet": tailnet} if tailnet else {}
    exp = expiration_from(expiration or "90d")
    if exp is not None:
        body["expiration"] = exp
    payload = c.request("POST", "/api/v1/apikey", body)
    o.message(payload, payload["apiKey"])


def apikeys_expire(c: AdminClient, o: Output, prefix: str, delete: bool = False) -> None:
    if delete:
        payload = c.request("DELETE", f"/api/v1/apikey/{quote(prefix, safe='')}")
        o.message(payload, "Key deleted")
    else:
        payload = c.request("POST", "/api/v1/apikey/expire", {"prefix": prefix})
        o.message(payload, "Key expired")


def add_verbs(aps: Subparsers[Parser]) -> None:
    c = aps.add_parser("create")
    c.add_argument("-e", "--expiration", default="90d", type=duration_arg)
    c.add_argument("--tailnet", help="scope the key to this tailnet (default: server admin)")
    c = aps.add_parser("list", aliases=["ls"])
    c.add_argument("--tailnet", help="only the keys scoped to this tailnet")
    for verb in ("expire", "delete"):
        c = aps.add_parser(verb)
        c.add_argument("-p", "--prefix")
        c.add_argument("--id", help="the key's id (instead of --prefix)")


def run(c: AdminClient, o: Output, args: argparse.Namespace, verb: str) -> None:
    if verb == "create":
        apikeys_create(c, o, args.expiration, args.tailnet)
    elif verb == "list":
        apikeys_list(c, o, args.tailnet)
    else:
        apikeys_expire(c, o, prefix_of(c, args.prefix, args.id), delete=verb == "delete")


def prefix_of(c: AdminClient, prefix: str | None, key_id: str | None) -> str:
    """The prefix --prefix names, or the one of the key --id names."""
    if prefix:
        return prefix
    if not key_id:
        raise UsageError("give --prefix PREFIX or --id ID")
    for key in c.request("GET", "/api/v1/apikey")["apiKeys"]:
        if str(key["id"]) == key_id:
            return str(key["prefix"])
    raise AdminError(f"no API key with id {key_id[:30]!r}")


NOUN: Final = Noun("apikeys", ("apikey",), "manage API keys", add_verbs, run)
