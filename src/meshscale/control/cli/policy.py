"""``meshscale-control policy``: get, set, check, history, rollback.

``set`` and ``rollback`` need ``policy.mode: database`` (in file mode, the file is the
source of truth). ``check`` validates a file on the server, against today's users and
nodes, running its ``tests``, and applies nothing; it exits non-zero if the policy would
be refused.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Final

from meshscale.control.cli.client import AdminClient
from meshscale.control.cli.common import Noun, Parser, Subparsers, UsageError, read_file
from meshscale.control.cli.output import Output, when


def _text(path: str) -> str:
    return sys.stdin.read() if path == "-" else read_file(path)


def policy_get(c: AdminClient, o: Output) -> None:
    payload = c.request("GET", "/api/v1/policy")
    o.message(payload, payload["policy"])


def policy_set(c: AdminClient, o: Output, path: str) -> None:
    payload = c.request("PUT", "/api/v1/policy", {"policy": _text(path)})
    o.message(payload, f"Policy updated (version {payload.get('version')})")


def policy_check(c: AdminClient, o: Output, path: str) -> None:
    payload = c.request("POST", "/api/v1/policy/check", {"policy": _text(path)})
    if not payload.get("valid"):
        errors: list[dict[str, Any]] = payload.get("errors") or [{"message": "invalid"}]
        raise ValueError(f"policy is invalid: {errors[0]['message']}")
    lines = ["Policy is valid"] + [f"warning: {w}" for w in payload.get("warnings", [])]
    o.message(payload, "\n".join(lines))


def policy_history(c: AdminClient, o: Output, limit: int) -> None:
    payload = c.request("GET", f"/api/v1/policy/history?limit={limit}")
    rows = [
        {k: v for k, v in r.items() if k != "policy"} | {"bytes": len(r["policy"])}
        for r in payload["versions"]
    ]
    o.table(
        payload,
        rows,
        [
            ("Version", lambda r: str(r["version"])),
            ("Updated", lambda r: when(r["updatedAt"])),
            ("Source", lambda r: str(r["source"])),
            ("Bytes", lambda r: str(r["bytes"])),
        ],
    )


def policy_rollback(c: AdminClient, o: Output, version: int) -> None:
    payload = c.request("POST", "/api/v1/policy/rollback", {"version": version})
    o.message(
        payload, f"Policy rolled back to version {version} (now version {payload.get('version')})"
    )


def add_verbs(pos: Subparsers[Parser]) -> None:
    pos.add_parser("get", help="print the policy in force")
    for verb, what in (
        ("set", "apply a policy file"),
        ("check", "validate a policy file without applying it"),
    ):
        c = pos.add_parser(verb, help=what)
        c.add_argument("-f", "--file", required=True, help="policy file (HuJSON), - for stdin")
    c = pos.add_parser("history", help="list the accepted policy versions, newest first")
    c.add_argument("--limit", type=int, default=20)
    c = pos.add_parser("rollback", help="put an earlier version back in force")
    c.add_argument("version_arg", nargs="?", type=int, metavar="VERSION")
    c.add_argument(
        "--version", dest="policy_version", type=int, help="the version number (see policy history)"
    )


def run(c: AdminClient, o: Output, args: argparse.Namespace, verb: str) -> None:
    if verb == "get":
        policy_get(c, o)
    elif verb == "set":
        policy_set(c, o, args.file)
    elif verb == "check":
        policy_check(c, o, args.file)
    elif verb == "history":
        policy_history(c, o, max(1, min(args.limit, 1000)))
    else:
        version = args.policy_version if args.policy_version is not None else args.version_arg
        if version is None:
            raise UsageError("missing --version (see policy history)")
        policy_rollback(c, o, version)


NOUN: Final = Noun("policy", (), "get, set, check, history, rollback of the policy", add_verbs, run)
