"""``meshscale``: the command-line client. Each verb lives in its own module and talks to
meshscaled only through the local API (``localclient``). Errors print one line and exit
non-zero: 1 for failures, 2 for usage errors.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from meshscale import __version__

from . import (
    completion,
    configure,
    dns,
    down,
    exitnode,
    ip,
    netcheck,
    ping,
    setcmd,
    status,
    switch,
    up,
    version,
    whois,
)
from .goflags import go_argv, usage
from .localclient import DEFAULT_SOCKET, CLIError, LocalClient

VERBS = (up, down, setcmd, switch, status, ip, ping, netcheck, whois, dns, exitnode, configure,
         version, completion)  # fmt: skip


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line: the problem, then the verb's usage (Go's flag package prints both).
        raise CLIError(f"{message} ({usage(self)}; see '{self.prog} --help')", code=2)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="meshscale", description="meshscale: control the meshscaled node agent")
    p.add_argument(
        "--socket",
        default=os.environ.get("MESHSCALE_SOCKET", DEFAULT_SOCKET),
        help=f"path to meshscaled's socket (default {DEFAULT_SOCKET})",
    )
    p.add_argument("--version", action="version", version=__version__)
    sub = p.add_subparsers(dest="verb", metavar="COMMAND", parser_class=_Parser)
    for mod in VERBS:
        mod.register(sub)
    p.set_defaults(root_parser=p)  # for `completion`, which lists the verbs
    return p


def _verb_parser(
    parser: argparse.ArgumentParser, args: argparse.Namespace
) -> argparse.ArgumentParser | None:
    """The innermost parser the command line reached (``configure systray`` -> its own)."""
    found: argparse.ArgumentParser | None = None
    current, ns_keys = parser, ("verb", "what")
    for key in ns_keys:
        name = getattr(args, key, None)
        sub = next((a for a in current._actions if isinstance(a, argparse._SubParsersAction)),
                   None)  # fmt: skip
        if not isinstance(name, str) or sub is None or name not in sub.choices:
            break
        current = found = sub.choices[name]
    return found


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args: argparse.Namespace | None = None
    try:
        args, extra = parser.parse_known_args(go_argv(parser, sys.argv[1:] if argv is None
                                                      else argv))  # fmt: skip
        verb = _verb_parser(parser, args)
        if extra:  # named against the verb's usage, as Go's flag package does
            (verb or parser).error(f"unrecognized arguments: {' '.join(extra)}")
        if args.verb is None:
            parser.print_help()
            return 2
        try:
            return int(args.run(args, LocalClient(args.socket)))
        except CLIError as exc:
            if exc.code == 2 and "usage: " not in str(exc) and verb is not None:
                raise CLIError(f"{exc} ({usage(verb)})", code=2) from exc
            raise
    except CLIError as exc:
        print(f"meshscale: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 1


def _entry() -> NoReturn:  # pragma: no cover
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
