"""The local API: JSON over HTTP on meshscaled's unix socket (tailscale ipn/localapi).

Routes (all under ``/localapi/v0/``)::

    GET  status            -> ipnstate.Status JSON (tailscale status --json shape)
    GET  prefs             -> Prefs JSON
    GET  netcheck          -> netcheck report JSON
    GET  whois?addr=IP     -> {"Node": {...}, "UserProfile": {...}}           (404 if unknown)
    GET  debug             -> counters of magicsock, the WireGuard device and the engine
    GET  metrics           -> the same, and peer/traffic gauges, as Prometheus text
    GET  dns-status        -> MagicDNS configuration, OS mode, counters    (404 without DNS)
    GET  dns-query?name=N&type=T -> quad-100's answer {"Rcode", "Answers", "Resolvers"...}
    POST start             {"Prefs": {...}, "AuthKey": "...", "Reset": bool}  -> {"BackendState"}
    POST prefs             {"Prefs": {...}} -> Prefs JSON (``set``: no new login)
    POST down              -> {}
    POST logout            -> {}
    POST ping?ip=IP        -> ipnstate.PingResult JSON
    GET  profiles/         -> [LoginProfile, ...]  every saved login profile (tailscale's shape)
    GET  profiles/current  -> LoginProfile          (ID "" while not saved yet)
    POST profiles/ID       -> LoginProfile          switch to profile ID   (404 if unknown)
    PUT  profiles/         -> LoginProfile          switch to a new empty profile (login)

Anyone who can open the socket may read; only root (uid 0, checked with SO_PEERCRED on the
connection, never trusted from the request) may change state. Errors are
``{"error": "one line"}`` with 400 (bad request), 403 (permission), 404, 405, 413 (a body
over MAX_REQUEST_BODY) or 500; malformed HTTP gets 400 from io.http before any handler.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

from meshscale.io.http import HTTPServer, Request, Response, Router
from meshscale.io.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from meshscale.io.metrics import Family, exposition
from meshscale.key import NodePublic

from .ipnstate import PingResult, Status
from .prefs import Prefs, PrefsError
from .store import PROFILE_ID

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

    async def edit_prefs(self, prefs: Prefs) -> None: ...

    async def down(self) -> None: ...

    async def logout(self) -> None: ...

    async def ping(self, ip: str, wait: float) -> PingResult: ...

    def profiles(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """(the current login profile, every saved one)."""

    async def switch_profile(self, pid: str | None) -> None:
        """To saved profile ``pid`` (BackendError 404 if unknown), or None: a new empty one."""

    async def netcheck(self) -> dict[str, Any]: ...

    def whois(self, addr: str) -> dict[str, Any] | None:
        """The peer (or self) with IP ``addr``, or with node key ``addr`` ("nodekey:...")."""


def _json(obj: Any, status: int = 200) -> Response:
    return Response.json_bytes(json.dumps(obj).encode(), status)


def _error(status: int, message: str) -> Response:
    return _json({"error": message}, status)


Handler = Callable[[Request], Awaitable[Response]]


def node_metrics(st: Status, debug: dict[str, Any]) -> list[Family]:
    """meshscaled's /metrics: backend state, peers, tunnel traffic and the debug counters."""
    peers = list(st.Peer.values())
    fams = [
        Family("meshscaled_running", "gauge", "1 while the backend state is Running.",
               [({}, float(st.BackendState == "Running"))]),
        Family("meshscaled_peers", "gauge", "Peers in the network map, by path.",
               [({"path": "direct"}, sum(1 for p in peers if p.CurAddr)),
                ({"path": "relay"}, sum(1 for p in peers if not p.CurAddr))]),
        Family("meshscaled_peer_rx_bytes_total", "counter", "Bytes received from peers.",
               [({}, sum(p.RxBytes for p in peers))]),
        Family("meshscaled_peer_tx_bytes_total", "counter", "Bytes sent to peers.",
               [({}, sum(p.TxBytes for p in peers))]),
    ]  # fmt: skip

    def counters(name: str, help_: str, key: str) -> None:
        table = debug.get(key)
        if isinstance(table, dict) and table:
            samples = [({"name": str(k)}, float(v)) for k, v in sorted(table.items())
                       if isinstance(v, int | float) and not isinstance(v, bool)]  # fmt: skip
            if samples:
                fams.append(Family(name, "counter", help_, samples))

    counters("meshscaled_magicsock_events_total", "magicsock counters by name.", "magicsock")
    counters("meshscaled_device_drops_total", "WireGuard device drops by reason.", "device_drops")
    counters("meshscaled_filter_drops_total", "Packet filter drops by reason.", "filter_drops")
    counters("meshscaled_engine_errors_total", "Engine errors by kind.", "engine_errors")
    return fams


class LocalAPI:
    """The local API over a LocalBackend, served by io.http on a unix socket."""

    def __init__(self, backend: LocalBackend, *, admin_uids: frozenset[int] = frozenset({0})):
        self.backend = backend
        self.admin_uids = admin_uids
        self._routes: dict[tuple[str, str], Handler] = {
            ("GET", "status"): self._status,
            ("GET", "prefs"): self._prefs,
            ("GET", "netcheck"): self._netcheck,
            ("GET", "whois"): self._whois,
            ("GET", "debug"): self._debug,
            ("GET", "metrics"): self._metrics,
            ("GET", "dns-status"): self._dns_status,
            ("GET", "dns-query"): self._dns_query,
            ("POST", "start"): self._start,
            ("POST", "prefs"): self._edit_prefs,
            ("POST", "down"): self._down,
            ("POST", "logout"): self._logout,
            ("POST", "ping"): self._ping,
        }
        # Every path comes to _dispatch, so that even a 404 is the API's JSON error.
        self.router = Router()
        self.router.add_prefix("*", "/", self._dispatch)
        self._server: HTTPServer | None = None

    async def start(self, path: Path) -> None:
        _prepare_socket_path(path)
        server = HTTPServer(self.router, max_body=MAX_REQUEST_BODY, error_response=_error)
        await server.start_unix(str(path))
        self._server = server
        # Readable by everyone (status), changes are gated by SO_PEERCRED per connection.
        os.chmod(path, 0o666)

    async def close(self) -> None:
        if self._server is not None:
            await self._server.close()
            self._server = None

    async def _dispatch(self, req: Request) -> Response:
        if req.method not in ("GET", "HEAD") and (
            req.peer_uid is None or req.peer_uid not in self.admin_uids
        ):
            return _error(403, "access denied: only root may change meshscaled's state")
        endpoint = req.path.removeprefix(PREFIX) if req.path.startswith(PREFIX) else None
        method = "GET" if req.method == "HEAD" else req.method
        if endpoint is not None and endpoint.startswith("profiles/"):
            handler: Handler | None = self._profiles
        else:
            handler = self._routes.get((method, endpoint or ""))
        if handler is None:
            if endpoint and any(e == endpoint for (_, e) in self._routes):
                return _error(405, "Method Not Allowed")
            return _error(404, "Not Found")
        try:
            return await handler(req)
        except BackendError as exc:
            return _error(exc.status, str(exc))
        except Exception as exc:  # a bug must not kill the daemon or leak a traceback
            log.exception("localapi: %s %s failed", req.method, req.path)
            return _error(500, f"internal error: {type(exc).__name__}")

    def _body(self, req: Request) -> dict[str, Any]:
        if not req.body:
            return {}
        try:
            obj = json.loads(req.body)
        except ValueError as exc:
            raise BackendError("request body is not valid JSON") from exc
        if not isinstance(obj, dict):
            raise BackendError("request body must be a JSON object")
        return obj

    async def _status(self, req: Request) -> Response:
        return _json(self.backend.status().to_json())

    async def _prefs(self, req: Request) -> Response:
        return _json(self.backend.prefs().to_json())

    async def _netcheck(self, req: Request) -> Response:
        return _json(await self.backend.netcheck())

    async def _debug(self, req: Request) -> Response:
        fn = getattr(self.backend, "debug", None)
        return _json(fn() if fn is not None else {})

    async def _metrics(self, req: Request) -> Response:
        fn = getattr(self.backend, "debug", None)
        return Response(200, exposition(node_metrics(self.backend.status(),
                                                     fn() if fn is not None else {})),
                        content_type=METRICS_CONTENT_TYPE)  # fmt: skip

    def _magicdns(self) -> Any:
        dns = getattr(self.backend, "magicdns", None)
        if dns is None:
            raise BackendError("MagicDNS is not running in this daemon", 404)
        return dns

    async def _dns_status(self, req: Request) -> Response:
        return _json(self._magicdns().status())

    async def _dns_query(self, req: Request) -> Response:
        dns = self._magicdns()
        name = req.query.get("name", "")
        if not name or len(name) > 255:
            raise BackendError("dns-query: want name=NAME (and type=TYPE)")
        try:
            return _json(await dns.query(name, req.query.get("type", "A") or "A"))
        except ValueError as exc:
            raise BackendError(f"dns-query: {exc}") from exc

    async def _whois(self, req: Request) -> Response:
        raw = req.query.get("addr", "")
        if raw.startswith("nodekey:"):  # tailscaled answers node keys too (relay admission)
            try:
                addr = NodePublic.from_text(raw).text()
            except ValueError as exc:
                raise BackendError(f"invalid node key {raw[:80]!r}") from exc
        else:
            addr = _parse_ip(raw)
        who = self.backend.whois(addr)
        if who is None:
            what = "node key" if raw.startswith("nodekey:") else "IP"
            return _error(404, f"no peer found with {what} {addr}")
        return _json(who)

    async def _start(self, req: Request) -> Response:
        body = self._body(req)
        try:
            prefs = Prefs.from_json(body.get("Prefs", {}))
        except PrefsError as exc:
            raise BackendError(str(exc)) from exc
        auth_key = body.get("AuthKey", "")
        reset = body.get("Reset", False)
        if not isinstance(auth_key, str) or not isinstance(reset, bool):
            raise BackendError("AuthKey must be a string and Reset a boolean")
        await self.backend.start(prefs, auth_key, reset)
        return _json({"BackendState": self.backend.status().BackendState})

    async def _edit_prefs(self, req: Request) -> Response:
        body = self._body(req)
        try:
            prefs = Prefs.from_json(body.get("Prefs", {}))
        except PrefsError as exc:
            raise BackendError(str(exc)) from exc
        await self.backend.edit_prefs(prefs)
        return _json(self.backend.prefs().to_json())

    async def _down(self, req: Request) -> Response:
        await self.backend.down()
        return _json({})

    async def _logout(self, req: Request) -> Response:
        await self.backend.logout()
        return _json({})

    async def _profiles(self, req: Request) -> Response:
        rest = req.path.removeprefix(PREFIX + "profiles/")
        method = "GET" if req.method == "HEAD" else req.method
        if method == "GET" and rest in ("", "current"):
            current, saved = self.backend.profiles()
            return _json(current if rest else saved)
        if method == "PUT" and rest == "":
            await self.backend.switch_profile(None)
        elif method == "POST" and rest and rest != "current":
            if not PROFILE_ID.fullmatch(rest):
                raise BackendError(f"invalid profile ID {rest[:32]!r}")
            await self.backend.switch_profile(rest)
        else:
            return _error(405 if rest in ("", "current") else 404, "Method Not Allowed"
                          if rest in ("", "current") else "Not Found")  # fmt: skip
        return _json(self.backend.profiles()[0])

    async def _ping(self, req: Request) -> Response:
        ip = _parse_ip(req.query.get("ip", ""))
        try:
            timeout = float(req.query.get("timeout", "5"))
        except ValueError as exc:
            raise BackendError("timeout must be a number of seconds") from exc
        if not 0 < timeout <= PING_TIMEOUT_MAX:
            raise BackendError(f"timeout must be in (0, {PING_TIMEOUT_MAX:g}] seconds")
        res = await self.backend.ping(ip, timeout)
        return _json(res.to_json())


def _prepare_socket_path(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _parse_ip(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError as exc:
        raise BackendError(f"invalid IP address {text[:64]!r}") from exc
