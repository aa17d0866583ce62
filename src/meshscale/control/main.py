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
    policy get | set -f FILE                (policy.mode database)
    import-headscale --db db.sqlite [--noise-key K --derp-key K]   (offline, empty state)

``serve`` opens State, and serves on ``listen_addr`` (TLS when tls_cert_path/key_path are
set): the REST API (API key required), ``/health``, the ts2021 protocol routes from
``meshscale.control.app`` and the embedded DERP from ``meshscale.relay`` (both mounted
when importable); on ``unix_socket``: the REST API, trusted; on ``metrics_listen_addr``:
``/metrics``. STUN listens on ``derp.server.stun_listen_addr``. A maintenance task
collects ephemeral nodes and expired registrations every ``node_update_check_interval``.
Admin verbs are in :mod:`meshscale.control.admin`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import ssl
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from meshscale.control import admin
from meshscale.control.api import API
from meshscale.control.config import ConfigError, ControlConfig, state_options
from meshscale.control.db import StoreError, open_store
from meshscale.control.state import State
from meshscale.control.verify import mount_verify
from meshscale.io.http import HTTPServer, Request, Response, Router
from meshscale.key import MachinePrivate, NodePrivate

log = logging.getLogger("meshscale.control")
PROG = "meshscale-control"
K = TypeVar("K", MachinePrivate, NodePrivate)


def load_or_create_key(path: Path, cls: type[K]) -> K:
    """A private key file (``privkey:<hex>``; derper's JSON form is read too), created
    with mode 0600 if missing. The control key must never change (spec §1.1)."""
    if path.exists():
        text = path.read_text().strip()
        if text.startswith("{"):
            text = str(json.loads(text)["PrivateKey"])
        return cls.from_text(text)
    key = cls.generate(os.urandom(32))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key.text() + "\n")
    return key


async def _health(req: Request) -> Response:
    return Response(200, b'{"status":"pass"}', [], "application/json")


def _tls_context(cfg: ControlConfig) -> ssl.SSLContext | None:
    if not cfg.tls_enabled:
        return None
    assert cfg.tls_cert_path is not None
    assert cfg.tls_key_path is not None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(cfg.tls_cert_path, cfg.tls_key_path)
    except OSError as exc:  # ssl.SSLError is an OSError too
        raise ConfigError(
            f"config: tls_cert_path/tls_key_path: cannot load {cfg.tls_cert_path} and "
            f"{cfg.tls_key_path}: {exc.strerror or exc}"
        ) from exc
    return ctx


def _server_port(cfg: ControlConfig) -> int:
    parts = urlsplit(cfg.server_url)
    return parts.port or (443 if parts.scheme == "https" else 80)


class Server:
    """Everything ``serve`` runs; ``start`` then ``close``. Used by tests in-process too."""

    def __init__(self, cfg: ControlConfig) -> None:
        self.cfg = cfg
        self.state: State | None = None
        self.app: Any = None
        self.derp: Any = None
        self.stun: Any = None
        self.http: list[HTTPServer] = []
        self.unix: asyncio.Server | None = None
        self.bound: dict[str, Any] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._embedded_region: Any = None

    async def start(self) -> None:
        cfg = self.cfg
        await self._check_socket_free()  # before touching the state
        cfg.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        db = cfg.database
        if db.type == "sqlite":
            db.sqlite_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            store = open_store(db.type, path=db.sqlite_path, dsn=db.postgres_dsn,
                               wal=db.write_ahead_log, wal_autocheckpoint=db.wal_autocheckpoint)
        except StoreError as exc:
            raise ConfigError(f"database: {exc}") from exc
        self.state = state = State(store, state_options(cfg))
        self.reload_policy()

        public = Router()
        writable = cfg.policy.mode == "database"
        API(state, policy_writable=writable).mount(public)
        public.add("GET", "/health", _health)
        mount_verify(public, state)  # for standalone relays' --verify-client-url
        derp_map = await self._start_derp(public)
        self._mount_protocol(public, derp_map)

        server = HTTPServer(public, server_header=PROG)
        host = cfg.listen_addr.host or None
        srv = await server.start(host, cfg.listen_addr.port, ssl=_tls_context(cfg))
        self.http.append(server)
        self.bound["listen"] = srv.sockets[0].getsockname()[:2]
        scheme = "https" if cfg.tls_enabled else "http"
        for sock in srv.sockets:
            log.info("listening on %s %s", scheme, sock.getsockname()[:2])
        log.info("server_url is %s", cfg.server_url)

        local = Router()
        API(state, trusted=True, policy_writable=writable).mount(local)
        local.add("GET", "/health", _health)
        self.unix = await self._start_unix(HTTPServer(local, server_header=PROG))

        if cfg.metrics_listen_addr is not None:
            metrics = Router()
            metrics.add("GET", "/metrics", self._metrics)
            mserver = HTTPServer(metrics)
            msrv = await mserver.start(cfg.metrics_listen_addr.host or None,
                                       cfg.metrics_listen_addr.port)
            self.http.append(mserver)
            self.bound["metrics"] = msrv.sockets[0].getsockname()[:2]
        if self.app is not None and hasattr(self.app, "start"):
            await self.app.start()
        self._tasks.append(asyncio.create_task(self._maintenance()))
        if cfg.derp.urls and cfg.derp.auto_update_enabled:
            self._tasks.append(asyncio.create_task(self._refresh_derp_map()))

    def reload_policy(self) -> bool:
        """Load ``policy.path`` (policy.mode file) into State; True if it changed.

        Called at start and on SIGHUP. State publishes PolicyChanged, and the map
        batcher then sends every node new packet filters.
        """
        cfg, state = self.cfg, self.state
        if state is None or cfg.policy.mode != "file" or cfg.policy.path is None:
            return False
        try:
            text = cfg.policy.path.read_text()
        except OSError as exc:
            raise ConfigError(f"config: policy.path: cannot read: {exc.strerror}") from exc
        if text == state.policy:
            return False
        state.set_policy(text)
        log.info("policy loaded from %s", cfg.policy.path)
        return True

    async def _check_socket_free(self) -> None:
        """Refuse to run beside a live server on the same socket (and state)."""
        path = self.cfg.unix_socket
        if not path.exists():
            return
        try:  # a live server answers; a stale socket from a crashed run refuses
            _, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(path)), 2)
        except (OSError, TimeoutError):
            return
        writer.close()
        raise ConfigError(f"unix_socket: another server is running on {path}")

    async def _start_unix(self, server: HTTPServer) -> asyncio.Server:
        path = self.cfg.unix_socket
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        await self._check_socket_free()
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # a stale socket from a crashed run
        start_unix = getattr(server, "start_unix", None)
        if start_unix is not None:
            usrv: asyncio.Server = await start_unix(str(path))
        else:
            # io.http has no unix listener yet: drive its connection handler directly.
            usrv = await asyncio.start_unix_server(server._on_connect, str(path))
        os.chmod(path, self.cfg.unix_socket_permission)
        self.http.append(server)
        self.bound["unix"] = str(path)
        log.info("admin API on unix socket %s", path)
        return usrv

    async def _start_derp(self, router: Router) -> Any:
        cfg = self.cfg
        derp_map = await self.build_derp_map()
        if not cfg.derp.server.enabled:
            return derp_map
        try:
            from meshscale.relay.app import derp_region, mount_derp
            from meshscale.relay.server import DERPServer
            from meshscale.relay.stun_server import STUNServer
        except ImportError:  # pragma: no cover - the relay package is part of meshscale
            log.warning("embedded DERP unavailable: meshscale.relay is missing")
            return derp_map
        ds = cfg.derp.server
        key = load_or_create_key(ds.private_key_path, NodePrivate)
        state = self.state
        assert state is not None

        async def verify(node_key: Any, info: Any) -> bool:
            return state.get_node_by_node_key(node_key) is not None

        self.derp = DERPServer(key, verify_client=verify if ds.verify_clients else None)
        mount_derp(router, self.derp)
        stun_port = 3478
        if ds.stun_listen_addr is not None:
            self.stun = STUNServer()
            bound = await self.stun.start(ds.stun_listen_addr.host or None,
                                          ds.stun_listen_addr.port)
            self.bound["stun"] = bound[0]  # [(host, port), ...]: one per address family
            stun_port = int(bound[0][1])
        if ds.automatically_add_embedded_derp_region:
            from meshscale.tailcfg import DERPRegion, from_json

            region = derp_region(
                ds.region_id, ds.region_code, ds.region_name, cfg.server_host,
                _server_port(cfg), stun_port,
                ipv4=str(ds.ipv4) if ds.ipv4 else "", ipv6=str(ds.ipv6) if ds.ipv6 else "",
            )
            self._embedded_region = from_json(DERPRegion, region)
            derp_map.Regions[ds.region_id] = self._embedded_region
        return derp_map

    async def build_derp_map(self) -> Any:
        """The DERP map: regions from ``derp.urls``, then ``derp.paths``, then the embedded
        region; a later source replaces a region of the same id (Headscale's order).
        An unreachable URL is logged and skipped."""
        from meshscale.tailcfg import DERPMap

        derp_map = DERPMap()
        for url in self.cfg.derp.urls:
            try:
                derp_map.Regions.update((await fetch_derp_map(url)).Regions)
            except (TimeoutError, OSError, ValueError) as exc:
                log.warning("derp.urls: cannot load %s: %s", url, exc)
        for path in self.cfg.derp.paths:
            derp_map.Regions.update(load_derp_map_file(path).Regions)
        if self._embedded_region is not None:
            derp_map.Regions[self._embedded_region.RegionID] = self._embedded_region
        return derp_map

    async def _refresh_derp_map(self) -> None:
        interval = max(self.cfg.derp.update_frequency.total_seconds(), 60.0)
        while True:
            await asyncio.sleep(interval)
            try:
                fresh = await self.build_derp_map()
                if self.app is not None and fresh != self.app.derp_map and fresh.Regions:
                    self.app.set_derp_map(fresh)
                    log.info("DERP map updated: regions %s", sorted(fresh.Regions))
            except Exception:
                log.exception("DERP map refresh failed")

    def _mount_protocol(self, router: Router, derp_map: Any) -> None:
        try:
            from meshscale.control.app import build_app
        except ImportError:
            log.warning("control protocol not available; serving only the REST API")
            return
        key = load_or_create_key(self.cfg.noise.private_key_path, MachinePrivate)
        if not derp_map.Regions:
            log.warning("no DERP regions: clients will not reach the Running state")
        self.app = build_app(self.state, self.cfg, derp_map, control_key=key)
        self.app.mount(router)

    async def _metrics(self, req: Request) -> Response:
        assert self.state is not None
        nodes = self.state.list_nodes()
        lines = [
            "# TYPE meshscale_control_nodes gauge",
            f"meshscale_control_nodes {len(nodes)}",
            "# TYPE meshscale_control_nodes_online gauge",
            f"meshscale_control_nodes_online {sum(n.online for n in nodes)}",
            "# TYPE meshscale_control_users gauge",
            f"meshscale_control_users {len(self.state.list_users())}",
        ]
        text = "\n".join(lines) + "\n"
        if self.derp is not None:
            with contextlib.suppress(Exception):
                from meshscale.relay.metrics import render

                text += render(self.derp, self.stun)
        return Response(200, text.encode(), [], "text/plain; version=0.0.4")

    async def _maintenance(self) -> None:
        interval = max(self.cfg.node_update_check_interval.total_seconds(), 1.0)
        while True:
            await asyncio.sleep(interval)
            try:
                assert self.state is not None
                result = self.state.gc()
                if result.removed_nodes:
                    log.info("removed inactive ephemeral nodes %s", list(result.removed_nodes))
            except Exception:
                log.exception("maintenance failed")

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.app is not None and hasattr(self.app, "close"):
            await self.app.close()
        if self.unix is not None:
            self.unix.close()
        for server in self.http:
            await server.close(grace=2)
        if self.derp is not None:
            await self.derp.close()
        if self.stun is not None:
            self.stun.close()
        if self.unix is not None:  # only a socket this server created
            with contextlib.suppress(FileNotFoundError):
                self.cfg.unix_socket.unlink()
        if self.state is not None:
            self.state.close()


MAX_DERP_MAP_BYTES = 4 << 20  # a remote DERP map larger than this is refused


async def fetch_derp_map(url: str, time_limit: float = 10.0) -> Any:
    """GET a DERP map (tailcfg.DERPMap JSON, e.g. a derper's or control's /derpmap/default).
    Raises OSError/ValueError/TimeoutError."""
    import aiohttp

    from meshscale.tailcfg import DERPMap, from_json

    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=time_limit)) as session,
            session.get(url) as resp,
        ):
            if resp.status != 200:
                raise ValueError(f"http {resp.status}")
            raw = await resp.content.read(MAX_DERP_MAP_BYTES + 1)
    except aiohttp.ClientError as exc:
        raise OSError(str(exc)) from exc
    if len(raw) > MAX_DERP_MAP_BYTES:
        raise ValueError("DERP map too large")
    derp_map = from_json(DERPMap, json.loads(raw))
    derp_map.validate()
    return derp_map


def load_derp_map_file(path: Path) -> Any:
    """A DERP map file (Headscale's derp.paths: YAML or JSON, ``regions`` keyed by id,
    field names matched case-insensitively as Go does)."""
    import yaml

    from meshscale.tailcfg import DERPMap, DERPNode, DERPRegion

    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"config: derp.paths: cannot load {path}: {exc}") from exc
    regions = _ci(data, "regions") if isinstance(data, dict) else None
    if not isinstance(regions, dict):
        raise ConfigError(f"config: derp.paths: {path} has no regions mapping")
    out = DERPMap()
    for rid, raw in regions.items():
        if not isinstance(raw, dict):
            raise ConfigError(f"config: derp.paths: {path}: region {rid} is not a mapping")
        nodes = [_fill(DERPNode(), n) for n in (_ci(raw, "nodes") or []) if isinstance(n, dict)]
        region = _fill(DERPRegion(), {k: v for k, v in raw.items() if k.lower() != "nodes"})
        region.Nodes = nodes
        out.Regions[int(rid)] = region
    try:
        out.validate()
    except ValueError as exc:
        raise ConfigError(f"config: derp.paths: {path}: {exc}") from exc
    return out


def _ci(data: dict[str, Any], key: str) -> Any:
    return next((v for k, v in data.items() if str(k).lower() == key), None)


T = TypeVar("T")


def _fill(obj: T, raw: dict[str, Any]) -> T:
    names = {f.lower(): f for f in obj.__dataclass_fields__}  # type: ignore[attr-defined]
    for key, value in raw.items():
        name = names.get(str(key).lower())
        if name is not None:
            setattr(obj, name, value)
    return obj


def run(cfg: ControlConfig, ready: Callable[[Server], None] | None = None) -> int:
    """Run ``serve`` until SIGINT/SIGTERM. Returns the exit code."""

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

        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGHUP, on_hup)
        try:
            await server.start()
            if ready is not None:
                ready(server)
            await stop.wait()
        finally:
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
    "trace": logging.DEBUG, "debug": logging.DEBUG, "info": logging.INFO,
    "warn": logging.WARNING, "error": logging.ERROR, "fatal": logging.CRITICAL,
    "panic": logging.CRITICAL, "disabled": logging.CRITICAL + 10,
}


class JSONFormatter(logging.Formatter):
    """One JSON object per line (log.format: json), zerolog's field names."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
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


def import_headscale(cfg: ControlConfig, args: Any) -> str:
    """``import-headscale``: offline, into an empty state. Returns the summary line."""
    from meshscale.control.db.headscale import import_headscale as run_import

    try:
        admin.AdminClient(unix_socket=str(cfg.unix_socket), timeout=1).request(
            "GET", "/api/v1/health")
    except admin.AdminError:
        pass
    else:
        raise admin.UsageError("the server is running: stop meshscale-control serve first")
    copies = [(args.noise_key, cfg.noise.private_key_path, MachinePrivate),
              (args.derp_key, cfg.derp.server.private_key_path, NodePrivate)]
    keys: list[tuple[Path, str]] = []
    for src, dst, cls in copies:
        if not src:
            continue
        try:
            text = Path(src).read_text().strip()
            cls.from_text(text)
        except (OSError, ValueError) as exc:
            raise admin.UsageError(f"{src}: not a private key file ({exc})") from exc
        if dst.exists() and dst.read_text().strip() != text:
            raise admin.UsageError(f"{dst} exists with another key; remove it to import")
        keys.append((dst, text))
    db = cfg.database
    if db.type == "sqlite":
        db.sqlite_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    state = State(open_store(db.type, path=db.sqlite_path, dsn=db.postgres_dsn),
                  state_options(cfg))
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
    return (f"imported {report.users} users and {report.nodes} nodes"
            + (f", skipped {len(report.skipped)}" if report.skipped else "")
            + (f"; copied {len(keys)} key file(s)" if keys else ""))


def main(argv: Sequence[str] | None = None) -> int:
    args = admin.build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.command == "version":
        from importlib.metadata import PackageNotFoundError, version

        try:
            sys.stdout.write(f"meshscale-control {version('meshscale')}\n")
        except PackageNotFoundError:  # pragma: no cover - running from a source tree
            sys.stdout.write("meshscale-control (unknown version)\n")
        return 0
    try:
        cfg = admin.load(args)
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
            sys.stdout.write(import_headscale(cfg, args) + "\n")
        else:
            admin.run_admin(args, cfg)
    except admin.UsageError as exc:
        sys.stderr.write(f"{PROG}: error: {exc} (see --help)\n")
        return 2
    except (admin.AdminError, ValueError, StoreError) as exc:
        sys.stderr.write(f"{PROG}: error: {exc}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
