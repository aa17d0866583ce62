"""``meshscale down`` (disconnect, keep the login) and ``meshscale logout`` (forget it)."""

from __future__ import annotations

import argparse

from .localclient import LocalClient


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("down", help="disconnect from the tailnet")
    p.set_defaults(run=run_down)
    p = sub.add_parser("logout", help="disconnect and expire the node's login")
    p.set_defaults(run=run_logout)


def run_down(args: argparse.Namespace, client: LocalClient) -> int:
    client.post("down")
    return 0


def run_logout(args: argparse.Namespace, client: LocalClient) -> int:
    client.post("logout")
    return 0
