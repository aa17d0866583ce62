"""The TCP accept path of ``io.http.HTTPServer`` (issue #12): what happens to a connection
between the kernel's accept queue and the HTTP parser.

asyncio's own server creates a transport, a stream reader and a task for every connection
it accepts, before the application sees it, and takes connections strictly in arrival
order. Under a connection flood both hurt a cheap request such as ``/health``: refusing an
attacker's connection cost as much as serving it, and a probe that arrived behind 1,000
attack connections waited for all of them (issue #12 load test: up to 1.2 s in the kernel's
accept queue). So this path is our own:

- Each time the listening socket is readable, up to ``ACCEPT_DRAIN`` connections are taken
  from the kernel with plain ``accept()``: the kernel queue stays short, and a connection
  waits in our queue instead, where it can be refused or put in order.
- ``accept_filter(host)`` is asked first, on the bare socket: a refused connection is held
  unread (no transport, no task: one entry in a heap), then reset, so a client retrying at
  once is slowed to its own concurrency. At most ``MAX_HELD`` are held; the rest are reset
  at once.
- The others wait in one queue per source (an IPv4 address or an IPv6 /64) and are started
  round-robin across sources, at most ``ACCEPT_BATCH`` per event-loop pass: a source with
  1,000 connections waiting gets one start per turn like a source with one, and the work of
  a burst is spread over many passes instead of sitting in one ahead of everything else.
- At most ``MAX_WAITING`` wait; past that the listener stops accepting and the kernel queue
  (its backlog) holds the rest, as it did before.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import heapq
import ipaddress
import itertools
import logging
import socket
import struct
from collections import deque
from collections.abc import Callable

log = logging.getLogger(__name__)

ACCEPT_BATCH = 16  # connections started (handed to asyncio) per event-loop pass
ACCEPT_DRAIN = 256  # accept() calls per readiness callback (a refused one costs ~10 µs)
MAX_WAITING = 1024  # accepted, not yet started; past it the kernel's queue holds the rest
MAX_HELD = 1024  # connections refused by accept_filter held before their reset
RETRY_AFTER_EMFILE = 1.0  # seconds the listener pauses when out of file descriptors
_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends a RST

AcceptFilter = Callable[[str | None], float | None]


def source_key(host: str | None) -> str:
    """The fairness key: the IPv4 address, the IPv6 /64 (IPv4-mapped: the IPv4 address)."""
    if not host or ":" not in host:
        return host or "?"
    try:
        ip = ipaddress.IPv6Address(host.split("%", 1)[0])
    except ValueError:
        return host
    if ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return f"{int(ip) >> 64:x}/64"


def reset(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
    sock.close()


class Listener:
    """What ``HTTPServer.start`` returns: the bound sockets (``sockets[0].getsockname()``)."""

    def __init__(self, sockets: list[socket.socket]) -> None:
        self.sockets = sockets


async def bind(host: str | None, port: int, backlog: int) -> list[socket.socket]:
    """Listening sockets for host:port (None: every address), as asyncio.start_server."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    socks: list[socket.socket] = []
    seen = set()
    try:
        for family, type_, proto, _, addr in infos:
            if (family, addr) in seen:
                continue
            seen.add((family, addr))
            sock = socket.socket(family, type_, proto)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(addr)
            except OSError as exc:
                raise OSError(
                    exc.errno, f"error while attempting to bind on address {addr!r}: {exc}"
                ) from None
            # A short kernel queue overflows under a connection burst: the kernel then drops
            # SYNs and every client, /health probes too, waits 1 s to retransmit.
            sock.listen(backlog)
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    return socks


class Acceptor:
    """Accepts on listening sockets and hands admitted connections to ``start(sock,
    listener)`` in fair batches; see the module docstring. Counters: ``refused`` (by the
    filter), ``held`` (refused, being held), ``waiting`` (admitted, not yet started)."""

    def __init__(
        self,
        start: Callable[[socket.socket, socket.socket], None],
        accept_filter: AcceptFilter | None = None,
    ) -> None:
        self._start = start
        self.accept_filter = accept_filter
        self.refused = 0
        self.started = 0
        self.waiting = 0
        self._listeners: list[socket.socket] = []
        self._paused: set[socket.socket] = set()  # listeners not read (queue full, EMFILE)
        self._queues: dict[str, deque[tuple[socket.socket, socket.socket]]] = {}
        self._turns: deque[str] = deque()  # sources with connections waiting, in turn
        self._pump_scheduled = False
        self._held: list[tuple[float, int, socket.socket]] = []  # (reset at, seq, sock)
        self._seq = itertools.count()
        self._expiry: asyncio.TimerHandle | None = None
        self._closed = False

    @property
    def held(self) -> int:
        return len(self._held)

    def listen(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self._listeners.append(sock)
        asyncio.get_running_loop().add_reader(sock.fileno(), self._readable, sock)

    def _pause(self, sock: socket.socket) -> None:
        if sock not in self._paused:
            self._paused.add(sock)
            asyncio.get_running_loop().remove_reader(sock.fileno())

    def _resume(self, sock: socket.socket) -> None:
        if sock in self._paused and not self._closed:
            self._paused.discard(sock)
            asyncio.get_running_loop().add_reader(sock.fileno(), self._readable, sock)

    def _readable(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        for _ in range(ACCEPT_DRAIN):
            if self.waiting >= MAX_WAITING:
                self._pause(listener)  # resumed by _pump once the queue drains
                break
            try:
                sock, addr = listener.accept()
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log.warning("http: accept failed (%s); pausing the listener 1 s", exc)
                    self._pause(listener)
                    loop.call_later(RETRY_AFTER_EMFILE, self._resume, listener)
                    break
                continue  # e.g. ECONNABORTED: that connection is gone, the next may not be
            host = str(addr[0]) if isinstance(addr, tuple) and addr else None
            hold = self.accept_filter(host) if self.accept_filter is not None else None
            if hold is not None:
                self.refused += 1
                self._hold(sock, hold)
                continue
            key = source_key(host)
            q = self._queues.get(key)
            if q is None:
                q = self._queues[key] = deque()
                self._turns.append(key)
            q.append((sock, listener))
            self.waiting += 1
        if self.waiting and not self._pump_scheduled:
            self._pump_scheduled = True
            loop.call_soon(self._pump)

    def _pump(self) -> None:
        """Start up to ACCEPT_BATCH waiting connections, one per source in turn."""
        self._pump_scheduled = False
        if self._closed:
            return
        for _ in range(ACCEPT_BATCH):
            if not self._turns:
                break
            key = self._turns.popleft()
            q = self._queues[key]
            sock, listener = q.popleft()
            if q:
                self._turns.append(key)
            else:
                del self._queues[key]
            self.waiting -= 1
            self.started += 1
            try:
                self._start(sock, listener)
            except Exception:  # one connection's failure is not the listener's
                log.exception("http: starting a connection failed")
                sock.close()
        if self.waiting < MAX_WAITING:
            for listener in list(self._paused):
                self._resume(listener)
        if self.waiting:
            self._pump_scheduled = True
            asyncio.get_running_loop().call_soon(self._pump)

    def _hold(self, sock: socket.socket, hold: float) -> None:
        if hold <= 0 or len(self._held) >= MAX_HELD or self._closed:
            reset(sock)
            return
        loop = asyncio.get_running_loop()
        at = loop.time() + hold
        heapq.heappush(self._held, (at, next(self._seq), sock))
        if self._expiry is None or at < self._expiry.when():
            if self._expiry is not None:
                self._expiry.cancel()
            self._expiry = loop.call_at(at, self._expire)

    def _expire(self) -> None:
        loop = asyncio.get_running_loop()
        self._expiry = None
        now = loop.time()
        while self._held and self._held[0][0] <= now:
            reset(heapq.heappop(self._held)[2])
        if self._held:
            self._expiry = loop.call_at(self._held[0][0], self._expire)

    def close(self) -> None:
        """Stop listening; reset held and waiting connections (none was read)."""
        self._closed = True
        loop = asyncio.get_running_loop()
        for listener in self._listeners:
            if listener not in self._paused:
                loop.remove_reader(listener.fileno())
            listener.close()
        self._listeners.clear()
        self._paused.clear()
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        for _, _, sock in self._held:
            reset(sock)
        self._held.clear()
        for q in self._queues.values():
            for sock, _ in q:
                reset(sock)
        self._queues.clear()
        self._turns.clear()
        self.waiting = 0
