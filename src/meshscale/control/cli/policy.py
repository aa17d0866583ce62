"""``meshscale-control policy``: get, set, check, history, rollback.

``set`` and ``rollback`` need ``policy.mode: database`` (in file mode, the file is the
source of truth). ``check`` validates a file on the server, against today's users and
nodes, running its ``tests``, and applies nothing; it exits non-zero if the policy would
be refused. Each tailnet has its own policy: ``--tailnet NAME`` (default ``default``; with
a tailnet-scoped API key, the key's own).
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


def _q(tailnet: str | None, **more: str) -> dict[str, str] | None:
    query = {**more, **({"tailnet": tailnet} if tailnet else {})}
    return query or None


def policy_get(c: AdminClient, o: Output, tailnet: str | None = None) -> None:
    payload = c.request("GET", "/api/v1/policy", query=_q(tailnet))
    o.message(payload, payload["policy"])


def policy_set(c: AdminClient, o: Output, path: str, tailnet: str | None = None) -> None:
    payload = c.request("PUT", "/api/v1/policy", {"policy": _text(path)}, query=_q(tailnet))
    o.message(payload, f"Policy updated (version {payload.get('version')})")


def policy_check(c: AdminClient, o: Output, path: str, tailnet: str | None = None) -> None:
    payload = c.request("POST", "/api/v1/policy/check", {"policy": _text(path)}, query=_q(tailnet))
    if not payload.get("valid"):
        errors: list[dict[str, Any]] = payload.get("errors") or [{"message": "invalid"}]
        raise ValueError(f"policy is invalid: {errors[0]['message']}")
    lines = ["Policy is valid"] + [f"warning: {w}" for w in payload.get("warnings", [])]
    o.message(payload, "\n".join(lines))


def policy_history(c: AdminClient, o: Output, limit: int, tailnet: str | None = None) -> None:
    payload = c.request("GET", "/api/v1/policy/history", query=_q(tailnet, limit=str(limit)))
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


def policy_rollback(c: AdminClient, o: Output, version: int, tailnet: str | None = None) -> None:
    payload = c.request("POST", "/api/v1/policy/rollback", {"version": version}, query=_q(tailnet))
    o.message(
        payload, f"Policy rolled back to version {version} (now version {payload.get('version')})"
    )


def add_verbs(pos: Subparsers[Parser]) -> None:
    tailnet_help = "the tailnet whose policy this is (default: default)"
    c = pos.add_parser("get", help="print the policy in force")
    c.add_argument("--tailnet", help=tailnet_help)
    for verb, what in (
        ("set", "apply a policy file"),
        ("check", "validate a policy file without applying it"),
    ):
        c = pos.add_parser(verb, help=what)
        c.add_argument("-f", "--file", required=True, help="policy file (HuJSON), - for stdin")
        c.add_argument("--tailnet", help=tailnet_help)
    c = pos.add_parser("history", help="list the accepted policy versions, newest first")
    c.add_argument("--limit", type=int, default=20)
    c.add_argument("--tailnet", help=tailnet_help)
    c = pos.add_parser("rollback", help="put an earlier version back in force")
    c.add_argument("--tailnet", help=tailnet_help)
    c.add_argument("version_arg", nargs="?", type=int, metavar="VERSION")
    c.add_argument(
        "--version", dest="policy_version", type=int, help="the version number (see policy history)"
    )


def run(c: AdminClient, o: Output, args: argparse.Namespace, verb: str) -> None:
    if verb == "get":
        policy_get(c, o, args.tailnet)
    elif verb == "set":
        policy_set(c, o, args.file, args.tailnet)
    elif verb == "check":
        policy_check(c, o, args.file, args.tailnet)
    elif verb == "history":
        policy_history(c, o, max(1, min(args.limit, 1000)), args.tailnet)
    else:
        version = args.policy_version if args.policy_version is not None else args.version_arg
        if version is None:
            raise UsageError("missing --version (see policy history)")
        policy_rollback(c, o, version, args.tailnet)


NOUN: Final = Noun("policy", (), "get, set, check, history, rollback of the policy", add_verbs, run)
