"""``meshscale-control audit list``: the audit log of admin changes, newest first."""

from __future__ import annotations

import argparse
import json
from typing import Final
from urllib.parse import urlencode

from meshscale.control.cli.client import AdminClient
from meshscale.control.cli.common import Noun, Parser, Subparsers
from meshscale.control.cli.output import Column, Output, when

AUDIT_COLUMNS: Final[list[Column]] = [
    ("ID", lambda e: e["id"]),
    ("When", lambda e: when(e["at"])),
    ("Who", lambda e: e["actor"]),
    ("Action", lambda e: e["action"]),
    ("Target", lambda e: e["target"]),
    ("From", lambda e: e["source"]),
    ("Detail", lambda e: json.dumps(e["detail"], sort_keys=True)[:80]),
]


def audit_list(c: AdminClient, o: Output, args: argparse.Namespace) -> None:
    query = {"limit": str(max(1, min(args.limit, 1000)))}
    for key in ("before", "actor", "action"):
        value = getattr(args, key)
        if value:
            query[key] = str(value)
    payload = c.request("GET", f"/api/v1/audit?{urlencode(query)}")
    o.table(payload, payload["entries"], AUDIT_COLUMNS)


def add_verbs(aus: Subparsers[Parser]) -> None:
    c = aus.add_parser("list", aliases=["ls"], help="list admin changes, newest first")
    c.add_argument("--limit", type=int, default=50)
    c.add_argument("--before", type=int, help="only entries older than this id (paging)")
    c.add_argument("--actor", help='only this actor ("apikey:<prefix>", "console:...")')
    c.add_argument("--action", help="only this operation (setTags, setPolicy, ...)")


def run(c: AdminClient, o: Output, args: argparse.Namespace, verb: str) -> None:
    audit_list(c, o, args)


NOUN: Final = Noun("audit", (), "the audit log of admin changes", add_verbs, run)
