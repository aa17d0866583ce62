"""The local API: JSON over HTTP on meshscaled's unix socket (tailscale ipn/localapi).

Routes (all under ``/localapi/v0/``)::

    GET  status            -> ipnstate.Status JSON (tailscale status --json shape)
    GET  prefs             -> Prefs JSON
    GET  netcheck          -> netcheck report JSON
    GET  whois?addr=IP     -> {"Node": {...}, "UserProfile": {...}}           (404 if unknown)
    GET  debug             -> counters of magicsock, the WireGuard device and the engine
    POST start             {"Prefs": {...}, "AuthKey": "...", "Reset": bool}  -> {"BackendState"}
    POST down              -> {}
    POST logout            -> {}
    POST ping?ip=IP        -> ipnstate.PingResult JSON

Anyone who can open the socket may read; only root (uid 0, checked with SO_PEERCRED on the
connection, never trusted from the request) may change state. Errors are
``{"error": "one line"}`` with 400 (bad request), 403 (permission), 404 or 500.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import socket
import struct
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web

from .ipnstate import PingResult, Status
from .prefs import Prefs, PrefsError

log = logging.getLogger("meshscale.localapi")

PREFIX = "/localapi/v0/"
MAX_REQUEST_BODY = 64 * 1024  # bytes: the largest legitimate body is a few hundred bytes
PING_TIMEOUT_MAX = 30.0  # seconds


class BackendError(Exception):
    """A request the backend refuses; the message goes to the caller as one line."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class LocalBackend(Protocol):
    """What the local API drives: the node backend, or a fake in tests."""

    def status(self) -> Status: ...

    def prefs(self) -> Prefs: ...

    async def start(self, prefs: Prefs, auth_key: str, reset: bool) -> None: ...

    async def down(self) -> None: ...

    async def logout(self) -> None: ...

    async def ping(self, ip: str, wait: float) -> PingResult: ...

    async def netcheck(self) -> dict[str, Any]: ...

    def whois(self, ip: str) -> dict[str, Any] | None: ...


def peer_uid(sock: socket.socket | None) -> int | None:
    """The connecting process's uid from SO_PEERCRED, or None if unavailable."""
    if sock is None or sock.family != socket.AF_UNIX:
        return None
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return None
    _pid, uid, _gid = struct.unpack("3i", raw)
    return int(uid)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


class LocalAPI:
    """An aiohttp application over a LocalBackend, served on a unix socket."""

    def __init__(self, backend: LocalBackend, *, admin_uids: frozenset[int] = frozenset({0})):
        self.backend = backend
        self.admin_uids = admin_uids
        self.app = web.Application(client_max_size=MAX_REQUEST_BODY, middlewares=[self._guard])
        r = self.app.router
        r.add_get(PREFIX + "status", self._status)
        r.add_get(PREFIX + "prefs", self._prefs)
        r.add_get(PREFIX + "netcheck", self._netcheck)
        r.add_get(PREFIX + "whois", self._whois)
        r.add_get(PREFIX + "debug", self._debug)
        r.add_post(PREFIX + "start", self._start)
        r.add_post(PREFIX + "down", self._down)
        r.add_post(PREFIX + "logout", self._logout)
        r.add_post(PREFIX + "ping", self._ping)
        self._runner: web.AppRunner | None = None

    async def start(self, path: Path) -> None:
        _prepare_socket_path(path)
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.UnixSite(self._runner, str(path))
        await site.start()
        # Readable by everyone (status), changes are gated by SO_PEERCRED per connection.
        os.chmod(path, 0o666)

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @web.middleware
    async def _guard(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.method not in ("GET", "HEAD"):
            sock = request.transport.get_extra_info("socket") if request.transport else None
            uid = peer_uid(sock)
            if uid is None or uid not in self.admin_uids:
                return _error(403, "access denied: only root may change meshscaled's state")
        try:
            resp: web.StreamResponse = await handler(request)
            return resp
        except web.HTTPException as exc:
            if exc.status >= 400:
                return _error(exc.status, exc.reason)
            raise
        except BackendError as exc:
            return _error(exc.status, str(exc))
        except Exception as exc:  # a bug must not kill the daemon or leak a traceback
            log.exception("localapi: %s %s failed", request.method, request.path)
            return _error(500, f"internal error: {type(exc).__name__}")

    async def _body(self, request: web.Request) -> dict[str, Any]:
        raw = await request.read()
        if not raw:
            return {}
        try:
            obj = json.loads(raw)
        except ValueError as exc:
            raise BackendError("request body is not valid JSON") from exc
        if not isinstance(obj, dict):
            raise BackendError("request body must be a JSON object")
        return obj

    async def _status(self, request: web.Request) -> web.Response:
        return web.json_response(self.backend.status().to_json())

    async def _prefs(self, request: web.Request) -> web.Response:
        return web.json_response(self.backend.prefs().to_json())

    async def _netcheck(self, request: web.Request) -> web.Response:
        return web.json_response(await self.backend.netcheck())

    async def _debug(self, request: web.Request) -> web.Response:
        fn = getattr(self.backend, "debug", None)
        return web.json_response(fn() if fn is not None else {})

    async def _whois(self, request: web.Request) -> web.Response:
        addr = _parse_ip(request.query.get("addr", ""))
        who = self.backend.whois(addr)
        if who is None:
            return _error(404, f"no peer found with IP {addr}")
        return web.json_response(who)

    async def _start(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        try:
            prefs = Prefs.from_json(body.get("Prefs", {}))
        except PrefsError as exc:
            raise BackendError(str(exc)) from exc
        auth_key = body.get("AuthKey", "")
        reset = body.get("Reset", False)
        if not isinstance(auth_key, str) or not isinstance(reset, bool):
            raise BackendError("AuthKey must be a string and Reset a boolean")
        await self.backend.start(prefs, auth_key, reset)
        return web.json_response({"BackendState": self.backend.status().BackendState})

    async def _down(self, request: web.Request) -> web.Response:
        await self.backend.down()
        return web.json_response({})

    async def _logout(self, request: web.Request) -> web.Response:
        await self.backend.logout()
        return web.json_response({})

    async def _ping(self, request: web.Request) -> web.Response:
        ip = _parse_ip(request.query.get("ip", ""))
        try:
            timeout = float(request.query.get("timeout", "5"))
        except ValueError as exc:
            raise BackendError("timeout must be a number of seconds") from exc
        if not 0 < timeout <= PING_TIMEOUT_MAX:
            raise BackendError(f"timeout must be in (0, {PING_TIMEOUT_MAX:g}] seconds")
        res = await self.backend.ping(ip, timeout)
        return web.json_response(res.to_json())


def _prepare_socket_path(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _parse_ip(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError as exc:
        raise BackendError(f"invalid IP address {text[:64]!r}") from exc
