"""The UAPI socket of meshscale-wireguard: /var/run/wireguard/IFNAME.sock, as wireguard-go has it.

An asyncio driver around ``meshscale.wireguard.uapi.UAPIParser``. It makes no protocol decisions:
for each connection it feeds reads into a parser, hands every request to a ``UAPIBackend``
(the engine) and writes the answer. Many requests may share one connection.

Why asyncio and not a thread per connection: the server must watch many idle connections, its
socket file and the process's signals together, and close all of that cleanly on shutdown;
one event loop does this without any cross-thread fd closing. Backend calls may block (taking
the engine's locks, rebinding the UDP socket), so they run on one worker thread: the loop stays
responsive and the calls are serialised, as wireguard-go's ipcMutex serialises them.

Socket file (wireguard-go ipc/uapi_unix.go, ipc/uapi_linux.go): the directory is created 0755;
the socket is bound under umask 077 so only root can connect. If the path exists, a connect
test tells a live daemon ("in use": fail) from a stale file (unlink, bind again). The daemon
stops when its socket file is deleted or replaced, and unlinks the file on close if it is
still its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import stat
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Final, Protocol

from meshscale.wireguard.uapi import (
    IPC_ERROR_UNKNOWN,
    MAX_ANSWER_SIZE,
    DeviceSnapshot,
    GetRequest,
    Request,
    SetRequest,
    UAPIError,
    UAPIParser,
    format_errno,
    format_get,
)
from meshscale.wireguard.uapi_client import format_request, parse_get_response, parse_set_response

log = logging.getLogger(__name__)

DEFAULT_SOCKET_DIR: Final = "/var/run/wireguard"
SOCKET_SUFFIX: Final = ".sock"
READ_SIZE: Final = 64 * 1024  # bytes per read
# A client that opens connections and never speaks holds one fd each; past this many the
# newest is closed at once, so a stuck or hostile client cannot exhaust the daemon's fds.
MAX_CONNECTIONS: Final = 64
CLOSE_TURNS: Final = 8  # loop turns wait_closed gives late-accepted connections to close
MIN_CLOSE_TURNS: Final = 4  # ... and at least this many, whatever it sees
SOCKET_CHECK_INTERVAL: Final = 1.0  # seconds between checks that our socket file still exists


class UAPIBackend(Protocol):
    """What the server drives: the WireGuard device (meshscale.wgengine.Engine)."""

    def uapi_get(self) -> DeviceSnapshot: ...

    def uapi_set(self, request: SetRequest) -> None:
        """Apply the request; raise UAPIError(errno) on failure (-98 for a taken listen port)."""
        ...


class UAPISocketInUseError(OSError):
    """Another live daemon answers on the socket path."""


def socket_path(ifname: str, socket_dir: str = DEFAULT_SOCKET_DIR) -> str:
    return os.path.join(socket_dir, ifname + SOCKET_SUFFIX)


def open_uapi_listener(ifname: str, socket_dir: str = DEFAULT_SOCKET_DIR) -> socket.socket:
    """Create, bind and listen on the UAPI socket of ifname (wireguard-go's UAPIOpen).

    Raises UAPISocketInUseError if a live daemon already serves that path, OSError otherwise.
    The process umask is changed while binding, as in wireguard-go: call this before starting
    threads that create files.
    """
    os.makedirs(socket_dir, mode=0o755, exist_ok=True)
    path = socket_path(ifname, socket_dir)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o077)
    try:
        try:
            sock.bind(path)
        except OSError as e:
            if e.errno != errno.EADDRINUSE:
                raise
            if _answers(path):
                raise UAPISocketInUseError(errno.EADDRINUSE, "unix socket in use", path) from None
            log.debug("removing stale UAPI socket %s", path)
            os.unlink(path)
            sock.bind(path)
        sock.listen(socket.SOMAXCONN)
    except BaseException:
        sock.close()
        raise
    finally:
        os.umask(old_umask)
    return sock


def _answers(path: str) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(2.0)
        probe.connect(path)
    except OSError:
        return False
    else:
        return True
    finally:
        probe.close()


def listener_from_fd(fd: int) -> socket.socket:
    """Adopt an inherited listening UNIX socket (WG_UAPI_FD)."""
    sock = socket.socket(fileno=fd)
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
        sock.detach()
        raise OSError(errno.ENOTSOCK, f"fd {fd} is not a UNIX stream socket")
    sock.listen(socket.SOMAXCONN)
    return sock


@dataclass(frozen=True, slots=True)
class UAPIServerStats:
    connections: int  # accepted in total
    rejected: int  # closed at once because MAX_CONNECTIONS were open
    requests: int  # answered with errno=0
    errors: int  # answered with a non-zero errno (malformed or failed)


class UAPIServer:
    """Serves one device's UAPI socket. Use ``start()``, then ``close()`` + ``wait_closed()``.

    ``socket_gone`` is set when the socket file is deleted or replaced (the daemon then exits,
    as wireguard-go does via inotify).
    """

    def __init__(
        self,
        backend: UAPIBackend,
        listener: socket.socket,
        *,
        max_connections: int = MAX_CONNECTIONS,
        socket_check_interval: float = SOCKET_CHECK_INTERVAL,
    ) -> None:
        self._backend = backend
        self._listener = listener
        self._max_connections = max_connections
        self._check_interval = socket_check_interval
        name = listener.getsockname()
        self.path: str | None = name if isinstance(name, str) and name else None
        self._identity = _file_identity(self.path) if self.path else None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="uapi-backend")
        self._server: asyncio.AbstractServer | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        # Every connection task, also those refused or closed on arrival: wait_closed waits
        # for all of them, so no transport outlives the server (its close needs loop turns).
        self._conn_tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._closing = False
        self._watch: asyncio.Task[None] | None = None
        self.socket_gone = asyncio.Event()
        self._connections = self._rejected = self._requests = self._errors = 0

    async def start(self) -> None:
        self._server = await asyncio.start_unix_server(self._on_connect, sock=self._listener)
        if self._identity is not None:
            self._watch = asyncio.create_task(self._watch_socket_file())
        log.debug("UAPI listener started on %s", self.path)

    def statistics(self) -> UAPIServerStats:
        return UAPIServerStats(self._connections, self._rejected, self._requests, self._errors)

    def close(self) -> None:
        """Stop accepting, drop open connections and unlink the socket file if it is ours."""
        self._closing = True
        if self._server is not None:
            self._server.close()
        else:
            self._listener.close()
        if self._watch is not None:
            self._watch.cancel()
        for task in self._handlers:
            task.cancel()
        if self.path is not None and self._identity is not None:
            if _file_identity(self.path) == self._identity:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path)
            self._identity = None
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def wait_closed(self) -> None:
        # A connection accepted just before close() gets its handler task on a later loop
        # turn (asyncio.Server.close does not drop accepted connections on 3.11): let those
        # start, see _closing and close their transports, then wait for every handler.
        # An accept still in asyncio's accept coroutine has no task yet, so an empty set on
        # the first turns proves nothing: always give it MIN_CLOSE_TURNS (one a short sleep).
        for turn in range(CLOSE_TURNS):
            await asyncio.sleep(0.005 if turn == MIN_CLOSE_TURNS - 1 else 0)
            tasks = [*self._conn_tasks, *([self._watch] if self._watch else [])]
            for task in self._handlers:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if not self._conn_tasks and turn >= MIN_CLOSE_TURNS - 1:
                break
        # A transport closed with unsent bytes waits for the selector to drain them; the loop
        # may stop first. Abort what is left so every socket is closed by the time we return.
        for writer in self._writers:
            writer.transport.abort()
        self._writers.clear()
        await asyncio.sleep(0)

    async def _watch_socket_file(self) -> None:
        assert self.path is not None
        while True:
            await asyncio.sleep(self._check_interval)
            if _file_identity(self.path) != self._identity:
                log.error("UAPI socket %s was removed or replaced; shutting down", self.path)
                self._identity = None  # not ours any more: never unlink it
                self.socket_gone.set()
                return

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conn_tasks.add(task)
        self._writers.add(writer)
        try:
            await self._on_connect_tracked(reader, writer, task)
        finally:
            self._conn_tasks.discard(task)
            if not self._closing:  # when closing, wait_closed aborts it (harmless if closed)
                self._writers.discard(writer)

    async def _on_connect_tracked(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, task: asyncio.Task[None]
    ) -> None:
        self._connections += 1
        if self._closing:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
            return
        if len(self._handlers) >= self._max_connections:
            self._rejected += 1
            log.error("UAPI: too many connections, closing a new one")
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
            return
        self._handlers.add(task)
        try:
            await self._serve(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away; nothing to answer
        finally:
            self._handlers.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        parser = UAPIParser()
        while not parser.closed:
            data = await reader.read(READ_SIZE)
            if data:
                parser.feed(data)
            else:
                parser.feed_eof()
            while True:
                try:
                    request = parser.next_request()
                except UAPIError as e:
                    self._errors += 1
                    log.error("UAPI: %s (errno %d)", e, e.errno)
                    writer.write(format_errno(e.errno))
                    if e.fatal:
                        await writer.drain()
                        return
                    continue
                if request is None:
                    break
                writer.write(await self._answer(request))
                # Back-pressure: a client that pipelines requests but does not read its answers
                # stalls here (drain waits only above the transport's high-water mark).
                await writer.drain()
            await writer.drain()

    async def _answer(self, request: Request) -> bytes:
        loop = asyncio.get_running_loop()
        try:
            if isinstance(request, GetRequest):
                snapshot = await loop.run_in_executor(self._executor, self._backend.uapi_get)
                answer = format_get(snapshot)
            else:
                await loop.run_in_executor(self._executor, self._backend.uapi_set, request)
                answer = format_errno(0)
        except UAPIError as e:
            self._errors += 1
            log.error("UAPI: %s (errno %d)", e, e.errno)
            return format_errno(e.errno)
        except Exception:
            # wireguard-go answers ENOANO for an error it did not classify; so do we, and the
            # daemon keeps serving.
            self._errors += 1
            log.exception("UAPI: backend failed")
            return format_errno(IPC_ERROR_UNKNOWN)
        self._requests += 1
        return answer


def _file_identity(path: str) -> tuple[int, int] | None:
    try:
        st = os.lstat(path)
    except OSError:
        return None
    if not stat.S_ISSOCK(st.st_mode):
        return None
    return st.st_dev, st.st_ino


# ---- a small blocking client (tests, tools, talking to wireguard-go) ---------------------------


def _call(path: str, request: Request, timeout: float) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.sendall(format_request(request))
        answer = bytearray()
        while not answer.endswith(b"\n\n") and len(answer) <= MAX_ANSWER_SIZE:
            chunk = sock.recv(READ_SIZE)
            if not chunk:
                break
            answer += chunk
        return bytes(answer)  # the answer parser rejects a truncated or oversized one


def query_device(path: str, *, timeout: float = 5.0) -> DeviceSnapshot:
    """``get`` over the UAPI socket at path; raises UAPIError or OSError."""
    return parse_get_response(_call(path, GetRequest(), timeout))


def configure_device(path: str, request: SetRequest, *, timeout: float = 5.0) -> None:
    """``set`` over the UAPI socket at path; raises UAPIError(errno) if the daemon refuses."""
    parse_set_response(_call(path, request, timeout))
