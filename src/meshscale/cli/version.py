"""``meshscale version``: the CLI's version (works without the daemon)."""

from __future__ import annotations

import argparse
import platform

from meshscale import __version__

from .localclient import LocalClient


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("version", help="print the version")
    p.add_argument("--json", action="store_true", help="print as JSON")
    p.set_defaults(run=run)


def run(args: argparse.Namespace, client: LocalClient) -> int:
    if args.json:
        import json

        print(json.dumps({"short": __version__, "long": __version__,
                          "python": platform.python_version()}, indent=2))  # fmt: skip
    else:
        print(__version__)
        print(f"  python version: {platform.python_version()}")
    return 0
