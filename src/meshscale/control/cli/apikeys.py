"""``meshscale-control apikeys``: create, list, expire, delete."""

from __future__ import annotations

import argparse
from typing import Final
from urllib.parse import quote

from meshscale.control.cli.client import AdminClient
from meshscale.control.cli.common import Noun, Parser, Subparsers, expiration_from
from meshscale.control.cli.output import Column, Output, when

APIKEY_COLUMNS: Final[list[Column]] = [
    ("ID", lambda k: k["id"]),
    ("Prefix", lambda k: k["prefix"]),
    ("Expiration", lambda k: when(k["expiration"])),
    ("Created", lambda k: when(k["createdAt"])),
    ("Last seen", lambda k: when(k["lastSeen"])),
]


def apikeys_list(c: AdminClient, o: Output) -> None:
    payload = c.request("GET", "/api/v1/apikey")
    o.table(payload, payload["apiKeys"], APIKEY_COLUMNS)


def apikeys_create(c: AdminClient, o: Output, expiration: str | None) -> None:
    body = {}
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
    c.add_argument("-e", "--expiration", default="90d")
    aps.add_parser("list", aliases=["ls"])
    for verb in ("expire", "delete"):
        c = aps.add_parser(verb)
        c.add_argument("-p", "--prefix", required=True)


def run(c: AdminClient, o: Output, args: argparse.Namespace, verb: str) -> None:
    if verb == "create":
        apikeys_create(c, o, args.expiration)
    elif verb == "list":
        apikeys_list(c, o)
    else:
        apikeys_expire(c, o, args.prefix, delete=verb == "delete")


NOUN: Final = Noun("apikeys", ("apikey",), "manage API keys", add_verbs, run)
