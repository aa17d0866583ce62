"""Process plumbing for meshscale-wireguard: logging, daemonising, and the serve-until-done loop.

wireguard-go (main.go) daemonises by opening the TUN device and the UAPI socket in the parent,
re-executing itself with them as fds 3 and 4 (WG_TUN_FD, WG_UAPI_FD, WG_PROCESS_FOREGROUND=1)
and exiting 0. We reach the same contract with fork: the child opens the TUN and the socket,
starts the engine and only then tells the parent, through a pipe, that it is ready. So the
parent exits 0 exactly when the interface and the socket exist (what wg-quick relies on), and
1 with the child's error on the terminal otherwise. No TUN flags have to be agreed between a
parent and a re-executed child, and no second interpreter start-up is paid.

The daemon runs until SIGTERM, SIGINT or SIGHUP, until the engine closes (the interface was
deleted, ``ip link del``), or until its socket file disappears (wireguard-go's inotify watch).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import select
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Final, Protocol

from meshscale.wgdev.uapi_server import UAPIBackend, UAPIServer

log = logging.getLogger(__name__)

STOP_SIGNALS: Final = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
READY_TIMEOUT: Final = 30.0  # seconds the parent waits for the daemon to come up
ENGINE_POLL_INTERVAL: Final = 0.5  # seconds per engine.wait_closed() call in the watcher thread


class DeviceEngine(UAPIBackend, Protocol):
    """What the daemon runs: meshscale.wgengine.Engine."""

    def start(self) -> None: ...

    def wait_closed(self, timeout: float | None = None) -> bool: ...

    def close(self) -> None: ...


# ---- logging -------------------------------------------------------------------------------------

LOG_LEVELS: Final = {
    "verbose": logging.DEBUG,
    "debug": logging.DEBUG,
    "error": logging.ERROR,
    "silent": logging.CRITICAL + 10,
}


def log_level_from_env(value: str | None) -> int:
    """LOG_LEVEL as wireguard-go reads it: verbose|debug, error (the default), silent."""
    return LOG_LEVELS.get(value or "", logging.ERROR)


class _WGFormatter(logging.Formatter):
    """wireguard-go's line shape: ``DEBUG: (wg0) 2025/05/01 12:00:00 message``."""

    def __init__(self, ifname: str) -> None:
        super().__init__(datefmt="%Y/%m/%d %H:%M:%S")
        self._prefix = f"({ifname}) "

    def format(self, record: logging.LogRecord) -> str:
        level = "ERROR" if record.levelno >= logging.WARNING else "DEBUG"
        text = (
            f"{level}: {self._prefix}{self.formatTime(record, self.datefmt)} {record.getMessage()}"
        )
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def setup_logging(ifname: str, level: int) -> None:
    """Send the process's log records to stderr in wireguard-go's format."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_WGFormatter(ifname))
    root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger("asyncio").setLevel(max(level, logging.INFO))  # not its selector choice


# ---- daemonising ---------------------------------------------------------------------------------


def daemonize(*, keep_output: bool, ready_timeout: float = READY_TIMEOUT) -> Callable[[], None]:
    """Fork. The parent never returns: it exits 0 once the child calls the returned ``ready``.

    Call before any thread is started. In the child (a new session) ``ready()`` reports success
    to the parent and points stdin at /dev/null, and stdout/stderr too unless ``keep_output``
    (wireguard-go keeps them only when LOG_LEVEL is set and not silent).
    """
    sys.stdout.flush()
    sys.stderr.flush()
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid:
        os.close(write_fd)
        os._exit(_parent_wait(pid, read_fd, ready_timeout))
    os.close(read_fd)
    os.setsid()

    def ready() -> None:
        devnull = os.open(os.devnull, os.O_RDWR)
        os.dup2(devnull, 0)
        if not keep_output:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
        os.close(devnull)
        with contextlib.suppress(OSError):
            os.write(write_fd, b"R")
        os.close(write_fd)

    return ready


def _parent_wait(pid: int, read_fd: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        readable, _, _ = select.select([read_fd], [], [], left)
        if readable:
            if os.read(read_fd, 1) == b"R":
                return 0
            # EOF without the ready byte: the child failed and has said why on stderr.
            _, status = os.waitpid(pid, 0)
            code = os.waitstatus_to_exitcode(status)
            return code if code > 0 else 1
    print("meshscale-wireguard: the daemon did not come up in time", file=sys.stderr)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    return 1


# ---- running -------------------------------------------------------------------------------------


class EarlyStop:
    """Records a stop signal that arrives while the daemon is still starting.

    Without it, SIGTERM between binding the socket and the event loop taking the signals over
    would kill the process by default and leave a stale socket. Create it first thing; ``serve``
    then stops at once, cleanly, if a signal came in.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous = {signum: signal.signal(signum, self._record) for signum in STOP_SIGNALS}

    def _record(self, signum: int, frame: object) -> None:
        self.signum = signum

    def restore(self) -> None:
        """Put back the handlers that were there before (for in-process callers and tests)."""
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


async def serve(
    engine: DeviceEngine,
    server: UAPIServer,
    *,
    handle_signals: bool = True,
    early_stop: EarlyStop | None = None,
    on_ready: Callable[[], None] | None = None,
) -> str:
    """Serve the UAPI until a stop condition; then close the server and the engine.

    Returns why it stopped: "signal", "engine closed" or "socket removed".
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    reason = ""

    def stop_because(why: str) -> None:
        nonlocal reason
        if not reason:
            reason = why
        stop.set()

    if handle_signals:
        for signum in STOP_SIGNALS:
            loop.add_signal_handler(signum, stop_because, "signal")
    if early_stop is not None and early_stop.signum is not None:
        stop_because("signal")  # it came during start-up; serve nothing, clean up
    halt_watcher = threading.Event()

    def watch_engine() -> None:
        while not halt_watcher.is_set():
            if engine.wait_closed(ENGINE_POLL_INTERVAL):
                loop.call_soon_threadsafe(stop_because, "engine closed")
                return

    watcher = threading.Thread(target=watch_engine, name="engine-watch", daemon=True)
    try:
        await server.start()
        watcher.start()
        if on_ready is not None:
            on_ready()
        socket_gone = asyncio.create_task(server.socket_gone.wait())
        socket_gone.add_done_callback(
            lambda task: None if task.cancelled() else stop_because("socket removed")
        )
        await stop.wait()
        socket_gone.cancel()
    finally:
        halt_watcher.set()
        if handle_signals:
            for signum in STOP_SIGNALS:
                loop.remove_signal_handler(signum)
        server.close()
        engine.close()
        await server.wait_closed()
        if watcher.is_alive():
            await asyncio.to_thread(watcher.join, 2 * ENGINE_POLL_INTERVAL)
    log.debug("Shutting down (%s)", reason)
    return reason
