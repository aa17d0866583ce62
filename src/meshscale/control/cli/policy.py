"""``meshscale-control policy``: get, set (policy.mode database)."""

from __future__ import annotations

import argparse
import sys
from typing import Final

from meshscale.control.cli.client import AdminClient
from meshscale.control.cli.common import Noun, Parser, Subparsers, read_file
from meshscale.control.cli.output import Output


def policy_get(c: AdminClient, o: Output) -> None:
    payload = c.request("GET", "/api/v1/policy")
    o.message(payload, payload["policy"])


def policy_set(c: AdminClient, o: Output, path: str) -> None:
    text = sys.stdin.read() if path == "-" else read_file(path)
    payload = c.request("PUT", "/api/v1/policy", {"policy": text})
    o.message(payload, "Policy updated")


def add_verbs(pos: Subparsers[Parser]) -> None:
    pos.add_parser("get")
    c = pos.add_parser("set")
    c.add_argument("-f", "--file", required=True, help="policy file (HuJSON), - for stdin")


def run(c: AdminClient, o: Output, args: argparse.Namespace, verb: str) -> None:
    if verb == "get":
        policy_get(c, o)
    else:
        policy_set(c, o, args.file)


NOUN: Final = Noun("policy", (), "get or set the policy (policy.mode database)", add_verbs, run)
