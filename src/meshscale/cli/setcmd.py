"""``meshscale set``: change only the settings named (tailscale's ``set``), no login."""

from __future__ import annotations

import argparse
from typing import Any

from .goflags import add_bool_flag
from .localclient import CLIError, LocalClient


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("set", help="change specified preferences")
    p.add_argument("--hostname", default=None, help="hostname to use instead of the OS's")
    add_bool_flag(p, "accept-dns", None, "accept DNS configuration from the control server")
    p.set_defaults(run=run)


def run(args: argparse.Namespace, client: LocalClient) -> int:
    if args.hostname is None and args.accept_dns is None:
        raise CLIError("set: no settings given (usage: meshscale set [--hostname=NAME] "
                       "[--accept-dns=BOOL])", code=2)
    prefs: dict[str, Any] = dict(client.get("prefs"))
    if args.hostname is not None:
        prefs["Hostname"] = args.hostname
    if args.accept_dns is not None:
        prefs["CorpDNS"] = args.accept_dns
    if not prefs.get("ControlURL"):
        raise CLIError("not configured yet: run 'meshscale up --login-server=URL' first")
    client.post("start", {"Prefs": prefs, "AuthKey": "", "Reset": False})
    return 0
