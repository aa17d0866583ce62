"""Go's flag rules on top of argparse, so commands copied from Tailscale's docs parse.

Go accepts ``-flag`` and ``--flag`` alike, ``-flag=value`` and ``-flag value`` for valued
flags, and a boolean flag never takes the next word (``whois --json 100.64.0.2``): only
``-flag=false`` sets one false. :func:`go_argv` rewrites a command line into argparse's
spelling for the verb it names; :func:`add_bool_flag` declares a Go boolean.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from .localclient import CLIError

FALSE_SUFFIX = ":false"  # hidden companion option: --name:false stores False


def parse_bool(text: str) -> bool:
    """Go's strconv.ParseBool."""
    if text in ("1", "t", "T", "true", "TRUE", "True"):
        return True
    if text in ("0", "f", "F", "false", "FALSE", "False"):
        return False
    raise argparse.ArgumentTypeError(f"invalid boolean {text!r} (want true or false)")


class GoBool(argparse.Action):
    """``--name``: True; never consumes a following word."""

    def __init__(self, option_strings: list[str], dest: str, **kw: Any) -> None:
        kw.pop("nargs", None)
        super().__init__(option_strings, dest, nargs=0, **kw)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:  # fmt: skip
        setattr(namespace, self.dest, not (option_string or "").endswith(FALSE_SUFFIX))


def add_bool_flag(p: argparse.ArgumentParser, name: str, default: bool | None, help: str) -> None:
    """``-name``, ``--name``, ``--name=true`` and ``--name=false``, as Go's flag package takes."""
    dest = name.replace("-", "_")
    p.add_argument(f"--{name}", action=GoBool, dest=dest, default=default, help=help)
    p.add_argument(
        f"--{name}{FALSE_SUFFIX}", action=GoBool, dest=dest, default=default, help=argparse.SUPPRESS
    )


def _options(p: argparse.ArgumentParser) -> tuple[set[str], set[str]]:
    """(long option names, the boolean ones) of parser ``p``."""
    names: set[str] = set()
    bools: set[str] = set()
    for action in p._actions:
        for opt in action.option_strings:
            if opt.startswith("--") and not opt.endswith(FALSE_SUFFIX):
                names.add(opt[2:])
                if isinstance(action, GoBool):
                    bools.add(opt[2:])
    return names, bools


def _subparser(p: argparse.ArgumentParser, verb: str) -> argparse.ArgumentParser | None:
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            sp = action.choices.get(verb)
            return sp if isinstance(sp, argparse.ArgumentParser) else None
    return None


def usage(p: argparse.ArgumentParser) -> str:
    return " ".join(p.format_usage().split())  # one line


def go_argv(parser: argparse.ArgumentParser, argv: Sequence[str]) -> list[str]:
    """``argv`` in argparse's spelling: Go single-dash long flags doubled, bool ``=value``
    forms resolved. Unknown verbs and flags are left for argparse to name."""
    out: list[str] = []
    current = parser
    names, bools = _options(parser)
    seen_verb = False
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            out.extend(argv[i:])
            break
        if arg.startswith("-") and len(arg) > 1:
            body = arg.lstrip("-")
            name, eq, value = body.partition("=")
            if arg.startswith("-") and not arg.startswith("--") and name not in names:
                out.append(arg)  # a real short option (-4, -1) or unknown: argparse decides
            elif name in bools and eq:
                try:
                    truth = parse_bool(value)
                except argparse.ArgumentTypeError:
                    raise CLIError(
                        f"invalid boolean value {value!r} for -{name}: parse error "
                        f"({usage(current)})",
                        code=2,
                    ) from None
                out.append(f"--{name}" if truth else f"--{name}{FALSE_SUFFIX}")
            else:
                out.append(f"--{body}" if name in names else arg)
        else:
            out.append(arg)
            if not seen_verb and (out[-2:-1] != ["--socket"]):
                sp = _subparser(parser, arg)
                if sp is not None:
                    current, seen_verb = sp, True
                    names, bools = _options(sp)
        i += 1
    return out
