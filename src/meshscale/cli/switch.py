"""``meshscale switch``: change between login profiles (tailscale's ``switch``).

    meshscale switch --list          the saved profiles; the current account carries a *
    meshscale switch ID|TAILNET|ACCOUNT

``meshscale login`` adds a profile, ``meshscale logout`` removes the current one. The name is
matched as upstream does: a profile ID first, then a tailnet, then an account (login name),
then a display name; a name that fits several profiles is refused with their IDs.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from .goflags import add_bool_flag
from .localclient import CLIError, LocalClient

POLL_INTERVAL = 0.1  # seconds between status polls after the switch
WAIT_LIMIT = 30.0  # seconds to wait for the new profile to settle


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("switch", help="switch to a different login profile (account/tailnet)")
    add_bool_flag(p, "list", False, "list the login profiles")
    p.add_argument("profile", nargs="?", default=None, metavar="ID|TAILNET|ACCOUNT")
    p.set_defaults(run=run)


def table(current: dict[str, Any], saved: list[dict[str, Any]]) -> str:
    rows = [("ID", "Tailnet", "Account")]
    for p in saved:
        name = str(p.get("Name") or "")
        if p.get("ID") == current.get("ID"):
            name += "*"
        rows.append((str(p.get("ID") or ""), _tailnet(p), name))
    widths = [max(len(r[i]) for r in rows) for i in range(2)]
    return "".join(f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]}".rstrip() + "\n"
                   for r in rows)  # fmt: skip


def _tailnet(p: dict[str, Any]) -> str:
    net = p.get("NetworkProfile")
    return str(net.get("DomainName") or "") if isinstance(net, dict) else ""


def find(saved: list[dict[str, Any]], name: str) -> dict[str, Any]:
    """The profile ``name`` means: by ID, then tailnet, account, display name."""
    keys = (
        lambda p: p.get("ID"),
        _tailnet,
        lambda p: p.get("Name"),
        lambda p: (p.get("UserProfile") or {}).get("DisplayName"),
    )
    for key in keys:
        hits = [p for p in saved if key(p) == name]
        if len(hits) == 1:
            return hits[0]
        if hits:
            ids = ", ".join(str(p.get("ID")) for p in hits)
            raise CLIError(f"{name!r} matches several profiles ({ids}); give the ID")
    raise CLIError(f"no profile named {name!r} (see 'meshscale switch --list')")


# What the switched-to profile settled in, as tailscale words it; any other state is still moving.
SETTLED = {
    "Running": "Success.",
    "NeedsLogin": "Logged out.\nTo log in, run:\n  meshscale up",
    "Stopped": "Stopped.\nTo connect, run:\n  meshscale up",
    "NeedsMachineAuth": "Waiting for the node to be approved by an admin.",
}


def run(args: argparse.Namespace, client: LocalClient) -> int:
    if args.list:
        if args.profile is not None:
            raise CLIError("switch: --list takes no profile name (usage: meshscale switch "
                           "--list | meshscale switch ID|TAILNET|ACCOUNT)", code=2)  # fmt: skip
        print(table(client.get("profiles/current"), client.get("profiles/")), end="")
        return 0
    if args.profile is None:
        raise CLIError("switch: which profile? (usage: meshscale switch ID|TAILNET|ACCOUNT "
                       "or meshscale switch --list)", code=2)  # fmt: skip
    current = client.get("profiles/current")
    target = find(client.get("profiles/"), args.profile)
    if target.get("ID") == current.get("ID"):
        print(f"Already on account {args.profile!r}")
        return 0
    client.post(f"profiles/{target['ID']}")
    print(f"Switching to account {args.profile!r}")
    deadline = time.monotonic() + WAIT_LIMIT
    while True:
        st = client.get("status")
        state = st.get("BackendState")
        if state in SETTLED:
            print(SETTLED[state])
            return 0
        if time.monotonic() >= deadline:
            raise CLIError(f"timed out waiting for the switch to complete (state {state})")
        time.sleep(POLL_INTERVAL)
