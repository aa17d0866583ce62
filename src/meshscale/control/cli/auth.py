"""``meshscale-control auth``: approve or reject a pending interactive login by its auth ID.

Headscale's names: ``auth register --auth-id ID --user U`` (``approve`` is the same) and
``auth reject --auth-id ID``, which ends the node's wait with an error.
"""

from __future__ import annotations

import argparse
from typing import Final

from meshscale.control.cli.client import AdminClient
from meshscale.control.cli.common import Noun, Parser, Subparsers
from meshscale.control.cli.nodes import nodes_register
from meshscale.control.cli.output import Output


def add_verbs(ns: Subparsers[Parser]) -> None:
    for verb in ("register", "approve", "reject"):
        c = ns.add_parser(verb)
        c.add_argument("--auth-id", required=True, help="the ID at the end of the AuthURL")
        if verb != "reject":
            c.add_argument("-u", "--user", required=True)


def run(c: AdminClient, o: Output, args: argparse.Namespace, verb: str) -> None:
    auth_id = args.auth_id.rsplit("/", 1)[-1]
    if verb in ("register", "approve"):
        nodes_register(c, o, args.user, auth_id)
        return
    payload = c.request("POST", "/api/v1/registration/reject", query={"key": auth_id})
    o.message(payload, f"Registration {auth_id} rejected")


NOUN: Final = Noun("auth", (), "approve or reject pending logins", add_verbs, run)
