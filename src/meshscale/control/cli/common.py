"""What every ``meshscale-control`` noun module shares: the Noun record, the argparse
parser class, argument helpers, and the choice of server (unix socket or ``--url``)."""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, NoReturn

from meshscale.control.cli.client import AdminClient
from meshscale.control.cli.output import Output
from meshscale.control.config import ControlConfig, parse_duration

URL_ENV = "MESHSCALE_CONTROL_URL"
API_KEY_ENV = "MESHSCALE_CONTROL_API_KEY"

Subparsers = argparse._SubParsersAction  # the type add_subparsers returns


class UsageError(Exception):
    pass


class Parser(argparse.ArgumentParser):
    """argparse whose errors are one line, end with this parser's own usage, and exit 2."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message} ({usage(self)})\n")
        raise SystemExit(2)


def usage(parser: argparse.ArgumentParser) -> str:
    """``usage: PROG VERB [...]; see 'PROG VERB --help'`` on one line."""
    return f"{' '.join(parser.format_usage().split())}; see '{parser.prog} --help'"


def duration_arg(text: str) -> str:
    """argparse type: a duration (``1h``, ``90d``, ``0``), refused at parse time if malformed."""
    try:
        parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    return text


def prefixes_arg(text: str) -> str:
    """argparse type: comma-separated IP prefixes (empty clears), each a valid CIDR."""
    for item in split([text]):
        try:
            ipaddress.ip_network(item, strict=True)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"invalid route {item[:60]!r}: {exc}") from exc
    return text


@dataclass(frozen=True, slots=True)
class Noun:
    """One admin command (``users``, ``nodes``, ...): its verbs and how to run them."""

    name: str
    aliases: tuple[str, ...]
    help: str
    add_verbs: Callable[[Subparsers[Parser]], None]
    run: Callable[[AdminClient, Output, argparse.Namespace, str], None]


def split(values: Sequence[str]) -> list[str]:
    """Repeated and comma-separated values as one list (``-t a,b -t c``)."""
    return [v.strip() for item in values for v in item.split(",") if v.strip()]


def pick(*values: str | None, what: str) -> str:
    """The first value given; UsageError naming ``what`` if none is."""
    for v in values:
        if v:
            return v
    raise UsageError(f"missing {what}")


def read_file(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from exc


def expiration_from(text: str | None) -> str | None:
    """``24h`` -> the RFC 3339 time that far from now (``0`` means never: None)."""
    if not text:
        return None
    delta = parse_duration(text)
    if not delta:
        return None
    return (datetime.now(UTC) + delta).isoformat().replace("+00:00", "Z")


def connect(args: argparse.Namespace, cfg: ControlConfig) -> AdminClient:
    """The client for the server the arguments, environment and config name."""
    # An explicit --socket wins over a remote address from the environment or config.
    url = args.url or (None if args.socket else os.environ.get(URL_ENV) or cfg.cli.address)
    if url:
        if "://" not in url:
            url = f"https://{url}"  # cli.address is host:port in Headscale
        key = args.api_key or os.environ.get(API_KEY_ENV) or cfg.cli.api_key
        if not key:
            raise UsageError("--url needs --api-key (or $MESHSCALE_CONTROL_API_KEY)")
        return AdminClient(
            url=url,
            api_key=key,
            insecure=cfg.cli.insecure,
            timeout=max(cfg.cli.timeout.total_seconds(), 1.0),
        )
    sock = args.socket or str(cfg.unix_socket)
    return AdminClient(unix_socket=sock, timeout=max(cfg.cli.timeout.total_seconds(), 1.0))


# Headscale's persistent flags (cobra): accepted anywhere on the line, like `nodes list -o json`.
PERSISTENT_VALUED: Final = {
    "-c": "--config",
    "--config": "--config",
    "-o": "--output",
    "--output": "--output",
}


def hoist_persistent(argv: Sequence[str]) -> list[str]:
    """``argv`` with -c/--config, -o/--output and --force moved before the command, so the
    top-level parser takes them wherever they were typed (``--`` ends the search)."""
    front: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            rest.extend(argv[i:])
            break
        name, eq, value = arg.partition("=")
        if arg == "--force":
            front.append(arg)
        elif name in PERSISTENT_VALUED and eq:
            front.append(f"{PERSISTENT_VALUED[name]}={value}")
        elif arg in PERSISTENT_VALUED and i + 1 < len(argv):
            front += [PERSISTENT_VALUED[arg], argv[i + 1]]
            i += 1
        elif arg[:2] in ("-c", "-o") and len(arg) > 2 and not arg.startswith("--"):
            front.append(f"{PERSISTENT_VALUED[arg[:2]]}={arg[2:]}")  # -ojson
        else:
            rest.append(arg)
        i += 1
    return front + rest


def confirm(args: argparse.Namespace, question: str) -> None:
    """Ask ``question`` at a terminal unless --force; refuse without one (scripts pass --force)."""
    if getattr(args, "force", False):
        return
    if not sys.stdin.isatty():
        raise UsageError(f"{question} -- not at a terminal: pass --force to confirm")
    sys.stderr.write(f"{question} [y/N] ")
    sys.stderr.flush()
    if sys.stdin.readline().strip().lower() not in ("y", "yes"):
        raise UsageError("not confirmed (pass --force to skip the question)")
