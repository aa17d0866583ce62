"""``meshscale set``: change only the settings named (tailscale's ``set``), no login."""

from __future__ import annotations

import argparse
from typing import Any

from . import routeflags
from .goflags import add_bool_flag
from .localclient import CLIError, LocalClient


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("set", help="change specified preferences")
    p.add_argument("--hostname", default=None, help="hostname to use instead of the OS's")
    add_bool_flag(p, "accept-dns", None, "accept DNS configuration from the control server")
    routeflags.add(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace, client: LocalClient) -> int:
    if (
        args.hostname is None
        and args.accept_dns is None
        and not any(routeflags.mentioned(args).values())
    ):
        raise CLIError("set: no settings given (usage: meshscale set [--hostname=NAME] "
                       "[--accept-dns=BOOL] [--advertise-routes=CIDR,...] [--exit-node=IP] ...)",
                       code=2)  # fmt: skip
    prefs: dict[str, Any] = dict(client.get("prefs"))
    if args.hostname is not None:
        prefs["Hostname"] = args.hostname
    if args.accept_dns is not None:
        prefs["CorpDNS"] = args.accept_dns
    routeflags.apply(args, prefs, client)
    if not prefs.get("ControlURL"):
        raise CLIError("not configured yet: run 'meshscale up --login-server=URL' first")
    client.post("prefs", {"Prefs": prefs})
    return 0
