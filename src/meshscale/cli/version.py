"""``meshscale version``: the CLI's version (works without the daemon)."""

from __future__ import annotations

import argparse
import json
import platform
from typing import Any

from meshscale import __version__

from .goflags import add_bool_flag
from .localclient import CLIError, LocalClient


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("version", help="print the version")
    add_bool_flag(p, "json", False, "print as JSON (tailscale's version.Meta shape)")
    add_bool_flag(p, "daemon", False, "also ask meshscaled for its version")
    p.set_defaults(run=run)


def meta(daemon_long: str | None = None) -> dict[str, Any]:
    """tailscale's version.Meta field names (omitempty ones left out when empty)."""
    # Here, not at the top: the tailcfg package pulls in the key types and cryptography.
    from meshscale.tailcfg.capver import CURRENT_CAPABILITY_VERSION

    mmp = __version__.split("-", 1)[0].split("+", 1)[0]
    out: dict[str, Any] = {
        "majorMinorPatch": mmp,
        "short": __version__,
        "long": __version__,
        "cap": CURRENT_CAPABILITY_VERSION,
    }
    if "dev" in __version__:
        out["isDev"] = True
    if daemon_long:
        out["daemonLong"] = daemon_long
    return out


def run(args: argparse.Namespace, client: LocalClient) -> int:
    daemon = None
    if args.daemon:
        daemon = str(client.get("status").get("Version") or "")
        if not daemon:
            raise CLIError("meshscaled did not report its version")
    if args.json:
        print(json.dumps(meta(daemon), indent=2))
        return 0
    print(__version__)
    print(f"  python version: {platform.python_version()}")
    if daemon is not None:
        print(f"  daemon: {daemon}")
    return 0
