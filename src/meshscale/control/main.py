"""``meshscale-control``: the coordination server and its admin CLI (Headscale's verbs).

    meshscale-control [-c CONFIG] [-o table|json|json-line|yaml] [--state-dir DIR]
                      [--url URL --api-key KEY | --socket PATH] COMMAND ...

    serve | configtest | version
    users create NAME | list | rename | delete
    nodes list | pending | register --user U --key K | delete | expire | rename | tag | move |
          approve-routes
    preauthkeys create --user U [--reusable --ephemeral --expiration 24h --tags tag:x]
                | list | expire
    apikeys create | list | expire | delete
    policy get | set -f FILE | check -f FILE | history | rollback --version N
    import-headscale --db db.sqlite [--noise-key K --derp-key K]   (offline, empty state)

This module is the entry point: the command line, logging, and the two commands that run
here (``serve``, which runs a :class:`~meshscale.control.server.Server` until SIGINT or
SIGTERM, and the offline ``import-headscale``). The admin verbs are in
:mod:`meshscale.control.cli`, one module per noun.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Final

from meshscale.control.cli import (
    OUTPUT_FORMATS,
    AdminClient,
    AdminError,
    Output,
    Parser,
    UsageError,
    add_commands,
    connect,
    run_admin,
)
from meshscale.control.cli.common import API_KEY_ENV, URL_ENV, hoist_persistent, usage
from meshscale.control.cli.extra import (
    OFFLINE_COMMANDS,
    add_extra_commands,
    run_health,
    run_offline,
)
from meshscale.control.config import CONFIG_ENV, ConfigError, ControlConfig, load_config

if TYPE_CHECKING:
    from meshscale.control.server import Server

# The server (state, db, app, policy, DERP, metrics) is imported by the verbs that run it
# (serve, import-headscale), not here: the admin verbs only talk to its REST API, and
# tests/control/test_cli_imports.py holds them to that.
PROG: Final = "meshscale-control"

log = logging.getLogger("meshscale.control")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog=PROG, description="meshscale coordination server")
    p.add_argument("-c", "--config", help=f"YAML config file (or ${CONFIG_ENV})")
    p.add_argument("-o", "--output", choices=OUTPUT_FORMATS, default="table")
    p.add_argument("--state-dir", help="state directory (default /var/lib/meshscale-control)")
    p.add_argument("--url", help=f"remote server URL, with --api-key (or ${URL_ENV})")
    p.add_argument("--api-key", help=f"API key for --url (or ${API_KEY_ENV})")
    p.add_argument("--socket", help="the server's unix socket (default from the config)")
    p.add_argument("-v", "--verbose", action="store_true")
    p.add_argument("--force", action="store_true", help="answer yes to confirmation questions")
    p.add_argument("--version", action="version", version=f"{PROG} {program_version()}")
    sub = p.add_subparsers(dest="command", parser_class=Parser)  # checked in main()

    sub.add_parser("serve", help="run the control server")
    sub.add_parser("version", help="print the version")
    c = sub.add_parser(
        "import-headscale", help="copy users and nodes from a Headscale SQLite database (offline)"
    )
    c.add_argument("--db", required=True, help="Headscale's db.sqlite")
    c.add_argument("--noise-key", help="Headscale's noise_private.key (keeps the control key)")
    c.add_argument("--derp-key", help="Headscale's derp_server_private.key")
    sub.add_parser("configtest", help="check the configuration")
    add_extra_commands(sub)

    add_commands(sub)
    return p


def verb_parser(
    parser: argparse.ArgumentParser, args: argparse.Namespace
) -> argparse.ArgumentParser:
    """The innermost parser the command line reached (``nodes list`` -> its own)."""
    current = parser
    for key in ("command", "verb"):
        name = getattr(args, key, None)
        sub = next((a for a in current._actions if isinstance(a, argparse._SubParsersAction)),
                   None)  # fmt: skip
        if not isinstance(name, str) or sub is None or name not in sub.choices:
            break
        current = sub.choices[name]
    return current


def program_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("meshscale")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "(unknown version)"


def load(args: argparse.Namespace) -> ControlConfig:
    """The configuration ``-c`` (or $MESHSCALE_CONTROL_CONFIG) and ``--state-dir`` name."""
    path = args.config or os.environ.get(CONFIG_ENV) or None
    return load_config(path, state_dir=args.state_dir)


def run(cfg: ControlConfig, ready: Callable[[Server], None] | None = None) -> int:
    """Run ``serve`` until SIGINT/SIGTERM. Returns the exit code."""
    import asyncio

    from meshscale.control.server import Server
    from meshscale.io import sdnotify

    async def main() -> None:
        server = Server(cfg)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)

        def on_hup() -> None:
            try:
                server.reload_policy()
            except ConfigError as exc:  # keep serving the old policy
                log.error("%s", exc)
            try:
                server.reload_dns()
            except ConfigError as exc:  # keep serving the old DNS configuration
                log.error("SIGHUP: %s", exc)

        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGHUP, on_hup)
        try:
            await server.start()
            # The tailnet just loaded (State tables, compiled policy, caches) lives as long
            # as the process: keep it out of the collector's full passes, which otherwise
            # walk every one of its objects (0.3-1 s at 10,000 nodes, each policy change).
            gc.collect()
            gc.freeze()
            if ready is not None:
                ready(server)
            sdnotify.notify("READY=1\nSTATUS=serving")
            await stop.wait()
        finally:
            sdnotify.notify("STOPPING=1")
            await server.close()

    try:
        asyncio.run(main())
    except ConfigError as exc:
        sys.stderr.write(f"{PROG}: {exc}\n")
        return 1
    except OSError as exc:
        sys.stderr.write(f"{PROG}: cannot start: {exc}\n")
        return 1
    return 0


# Headscale's log.level names (zerolog) -> logging levels.
_LOG_LEVELS = {
    "trace": logging.DEBUG,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "fatal": logging.CRITICAL,
    "panic": logging.CRITICAL,
    "disabled": logging.CRITICAL + 10,
}


class JSONFormatter(logging.Formatter):
    """One JSON object per line (log.format: json), zerolog's field names."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, str] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname.lower().replace("warning", "warn"),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            out["error"] = self.formatException(record.exc_info)
        return json.dumps(out)


def setup_logging(cfg: ControlConfig, *, verbose: bool = False) -> None:
    handler = logging.StreamHandler()
    if cfg.log_format == "json":
        handler.setFormatter(JSONFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    if not any(type(h) is logging.StreamHandler for h in root.handlers):
        root.addHandler(handler)  # (an embedding program's or pytest's handlers stay)
    root.setLevel(logging.DEBUG if verbose else _LOG_LEVELS[cfg.log_level])


def import_headscale(cfg: ControlConfig, args: argparse.Namespace) -> str:
    """``import-headscale``: offline, into an empty state. Returns the summary line."""
    from meshscale.control.config import state_options
    from meshscale.control.db import open_store
    from meshscale.control.db.headscale import import_headscale as run_import
    from meshscale.control.state import State
    from meshscale.key import MachinePrivate, NodePrivate

    try:
        AdminClient(unix_socket=str(cfg.unix_socket), timeout=1).request("GET", "/api/v1/health")
    except AdminError:
        pass
    else:
        raise UsageError("the server is running: stop meshscale-control serve first")
    copies = [
        (args.noise_key, cfg.noise.private_key_path, MachinePrivate),
        (args.derp_key, cfg.derp.server.private_key_path, NodePrivate),
    ]
    keys: list[tuple[Path, str]] = []
    for src, dst, cls in copies:
        if not src:
            continue
        try:
            text = Path(src).read_text().strip()
            cls.from_text(text)
        except (OSError, ValueError) as exc:
            raise UsageError(f"{src}: not a private key file ({exc})") from exc
        if dst.exists() and dst.read_text().strip() != text:
            raise UsageError(f"{dst} exists with another key; remove it to import")
        keys.append((dst, text))
    db = cfg.database
    if db.type == "sqlite":
        db.sqlite_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    state = State(open_store(db.type, path=db.sqlite_path, dsn=db.postgres_dsn), state_options(cfg))
    try:
        report = run_import(state, args.db)
    finally:
        state.close()
    for dst, text in keys:
        if not dst.exists():
            dst.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(text + "\n")
    for line in report.skipped:
        log.warning("import: skipped %s", line)
    return (
        f"imported {report.users} users and {report.nodes} nodes"
        + (f", skipped {len(report.skipped)}" if report.skipped else "")
        + (f"; copied {len(keys)} key file(s)" if keys else "")
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(hoist_persistent(sys.argv[1:] if argv is None else argv))
    verb = verb_parser(parser, args)
    if extra:  # named against the verb's own usage, not the root's
        verb.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command is None:  # after the check above, so `--bogus` alone is named
        parser.error("missing command")
    if args.command == "version":
        sys.stdout.write(f"meshscale-control {program_version()}\n")
        return 0
    if args.command in OFFLINE_COMMANDS:
        return run_offline(args, parser)
    try:
        cfg = load(args)
    except ConfigError as exc:
        sys.stderr.write(f"{PROG}: {exc}\n")
        return 2 if args.command == "configtest" else 1
    if args.command in ("serve", "configtest"):
        setup_logging(cfg, verbose=args.verbose)
        for warning in cfg.warnings:
            log.warning("config: %s", warning)
        if args.command == "configtest":
            sys.stdout.write(
                f"config OK ({cfg.source or 'defaults'}), {len(cfg.warnings)} warning(s)\n"
            )
            return 0
        return run(cfg)
    try:
        if args.command == "import-headscale":
            from meshscale.control.db import StoreError

            try:
                sys.stdout.write(import_headscale(cfg, args) + "\n")
            except StoreError as exc:
                return failed(args, exc)
        elif args.command == "health":
            run_health(connect(args, cfg), Output(args.output))
        else:
            run_admin(args, cfg)
    except UsageError as exc:
        if not Output(args.output).error(str(exc)):
            sys.stderr.write(f"{PROG}: error: {exc} ({usage(verb)})\n")
        return 2
    except (AdminError, ValueError) as exc:
        return failed(args, exc)
    return 0


def failed(args: argparse.Namespace, exc: Exception) -> int:
    """Report a failed verb (as JSON under a machine format) and return its exit code, 1."""
    if not Output(args.output).error(str(exc)):
        sys.stderr.write(f"{PROG}: error: {exc}\n")
    return 1


if __name__ == "__main__":
    sys.exit(main())
