"""``meshscale-wireguard [-f|--foreground] IFNAME``: a drop-in for ``wireguard-go IFNAME``.

Creates the TUN interface IFNAME, serves the UAPI on /var/run/wireguard/IFNAME.sock (so ``wg``
and ``wg-quick`` with WG_QUICK_USERSPACE_IMPLEMENTATION=meshscale-wireguard drive it unchanged)
and runs the data plane. Environment, as wireguard-go reads it:

    WG_PROCESS_FOREGROUND=1   do not daemonise (same as -f)
    WG_TUN_FD=N               use this already-open TUN fd instead of creating IFNAME
    WG_UAPI_FD=N              serve this already-listening UNIX socket fd
    LOG_LEVEL=verbose|error|silent   (default error); logs go to stderr

Exit status: 0 once the interface and its socket exist (daemon mode) or after a clean stop
(foreground); 1 if setting up failed; 2 for a usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import logging
import os
import struct
import sys
from collections.abc import Callable, Sequence
from typing import Final, NoReturn, Protocol

from meshscale import __version__
from meshscale.wgdev.daemon import (
    DeviceEngine,
    EarlyStop,
    daemonize,
    log_level_from_env,
    serve,
    setup_logging,
)
from meshscale.wgdev.uapi_server import (
    DEFAULT_SOCKET_DIR,
    UAPIServer,
    listener_from_fd,
    open_uapi_listener,
)

log = logging.getLogger(__name__)

PROG: Final = "meshscale-wireguard"
DEFAULT_MTU: Final = 1420  # bytes; docs/protocol/wireguard.md §8
IFNAMSIZ: Final = 16  # bytes, including the terminating NUL (linux/if.h)
_TUNGETIFF: Final = 0x800454D2  # _IOR('T', 210, unsigned int)


class EngineFactory(Protocol):
    """How the daemon builds its engine; ``Engine.create`` by default."""

    def __call__(self, ifname: str, *, tun_fd: int | None, mtu: int) -> DeviceEngine: ...


class _UsageError(Exception):
    pass


class _ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise _UsageError(message)


def _argument_parser() -> argparse.ArgumentParser:
    parser = _ArgumentParser(
        prog=PROG,
        description="Userspace WireGuard daemon (a drop-in for wireguard-go), driven by wg(8).",
    )
    parser.add_argument(
        "-f", "--foreground", action="store_true", help="stay in the foreground (do not daemonise)"
    )
    parser.add_argument("--version", action="version", version=f"{PROG} v{__version__}")
    parser.add_argument("ifname", metavar="IFNAME", help="interface name (at most 15 bytes)")
    return parser


def interface_name_problem(name: str) -> str | None:
    """Why the kernel would refuse name as an interface name (dev_valid_name), or None."""
    raw = name.encode("utf-8", "surrogateescape")
    if not raw:
        return "empty"
    if len(raw) >= IFNAMSIZ:
        return f"longer than {IFNAMSIZ - 1} bytes"
    if name in (".", ".."):
        return "reserved"
    if any(c in name for c in "/:%") or any(c.isspace() for c in name):
        return "contains '/', ':', '%' or whitespace"
    return None


def _fd_from_env(variable: str) -> int | None:
    value = os.environ.get(variable)
    if not value:
        return None
    if not value.isascii() or not value.isdigit() or int(value) > 2**31 - 1:
        raise ValueError(f"{variable} is not a file descriptor number: {value!r}")
    return int(value)


def _tun_name(fd: int) -> str | None:
    """The interface name behind a TUN fd (wireguard-go asks the device for its real name)."""
    try:
        ifreq = fcntl.ioctl(fd, _TUNGETIFF, bytes(40))
    except OSError:
        return None
    name = struct.unpack_from(f"{IFNAMSIZ}s", ifreq)[0].split(b"\0", 1)[0]
    return name.decode("utf-8", "surrogateescape") or None


def _default_engine_factory() -> EngineFactory:
    # Imported here so that this module (and --help) works without the data plane.
    from meshscale.wgengine.engine import Engine

    return Engine.create


def main(
    argv: Sequence[str] | None = None,
    *,
    engine_factory: EngineFactory | None = None,
    socket_dir: str = DEFAULT_SOCKET_DIR,
) -> int:
    """Entry point of the ``meshscale-wireguard`` console script; returns the exit status.

    ``engine_factory`` and ``socket_dir`` exist for tests (wg itself only looks in the default).
    """
    try:
        args = _argument_parser().parse_args(argv)
    except _UsageError as e:
        print(f"{PROG}: {e} (usage: {PROG} [-f|--foreground] IFNAME)", file=sys.stderr)
        return 2
    except SystemExit as e:  # --help and --version print and "exit" 0
        return e.code if isinstance(e.code, int) else 0
    ifname: str = args.ifname
    if (problem := interface_name_problem(ifname)) is not None:
        print(f"{PROG}: invalid interface name {ifname!r}: {problem}", file=sys.stderr)
        return 2
    try:
        tun_fd = _fd_from_env("WG_TUN_FD")
        uapi_fd = _fd_from_env("WG_UAPI_FD")
    except ValueError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 1
    if tun_fd is not None:
        ifname = _tun_name(tun_fd) or ifname
    foreground = args.foreground or os.environ.get("WG_PROCESS_FOREGROUND") == "1"
    level = log_level_from_env(os.environ.get("LOG_LEVEL"))

    ready: Callable[[], None] | None = None
    if not foreground:
        # Fork before any thread exists; the parent exits in daemonize() once we are ready.
        keep_output = bool(os.environ.get("LOG_LEVEL")) and level <= logging.ERROR
        ready = daemonize(keep_output=keep_output)
    setup_logging(ifname, level)
    return _run(ifname, tun_fd, uapi_fd, engine_factory, socket_dir, ready)


def _run(
    ifname: str,
    tun_fd: int | None,
    uapi_fd: int | None,
    engine_factory: EngineFactory | None,
    socket_dir: str,
    ready: Callable[[], None] | None,
) -> int:
    early_stop = EarlyStop()  # from here on, SIGTERM/SIGINT/SIGHUP end in a clean shutdown
    try:
        return _start_and_serve(
            ifname, tun_fd, uapi_fd, engine_factory, socket_dir, ready, early_stop
        )
    finally:
        early_stop.restore()


def _start_and_serve(
    ifname: str,
    tun_fd: int | None,
    uapi_fd: int | None,
    engine_factory: EngineFactory | None,
    socket_dir: str,
    ready: Callable[[], None] | None,
    early_stop: EarlyStop,
) -> int:
    log.debug("Starting %s version %s", PROG, __version__)
    try:
        factory = engine_factory or _default_engine_factory()
    except ImportError as e:
        log.error("The data-plane engine is not available: %s", e)
        return 1
    try:
        engine = factory(ifname, tun_fd=tun_fd, mtu=DEFAULT_MTU)
    except Exception as e:
        log.error("Failed to create TUN device: %s", e)
        return 1
    try:
        if uapi_fd is not None:
            listener = listener_from_fd(uapi_fd)
        else:
            listener = open_uapi_listener(ifname, socket_dir)
    except OSError as e:
        log.error("UAPI listen error: %s", e)
        engine.close()
        return 1
    server = UAPIServer(engine, listener)
    try:
        engine.start()
    except Exception as e:
        log.error("Failed to start the device: %s", e)
        server.close()
        engine.close()
        return 1
    log.debug("Device started")
    try:
        reason = asyncio.run(serve(engine, server, early_stop=early_stop, on_ready=ready))
    except Exception:
        log.exception("The daemon failed")
        with contextlib.suppress(Exception):
            server.close()
        engine.close()
        return 1
    log.debug("Stopped: %s", reason)
    return 0


if __name__ == "__main__":
    sys.exit(main())
