"""Server: everything ``meshscale-control serve`` runs, wired together.

``start`` opens State and serves on ``listen_addr`` (TLS when tls_cert_path/key_path are
set): the REST API (API key required), ``/health``, ``/verify`` for standalone relays, the
ts2021 protocol routes (:mod:`meshscale.control.app`) and the embedded DERP
(:mod:`meshscale.relay`); on ``unix_socket``: the REST API, trusted; on
``metrics_listen_addr``: ``/metrics``. STUN listens on ``derp.server.stun_listen_addr``. A
maintenance task collects ephemeral nodes and expired registrations every
``node_update_check_interval``, and one refreshes the DERP map from ``derp.urls``. Used by
tests in-process too; ``close`` undoes ``start``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import ssl
from dataclasses import replace
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

from meshscale.control.api import API
from meshscale.control.app import ControlApp, build_app
from meshscale.control.config import (
    ConfigError,
    ControlConfig,
    load_config,
    parse_extra_records,
    state_options,
)
from meshscale.control.console import console_for
from meshscale.control.db import StoreError, open_store
from meshscale.control.derpmap import build_derp_map
from meshscale.control.policyfile import PolicyFile
from meshscale.control.state import State
from meshscale.control.verify import admits, mount_verify
from meshscale.derp.info import ClientInfo
from meshscale.io.http import HTTPServer, Listener, Request, Response, Router
from meshscale.io.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from meshscale.io.metrics import Family, exposition
from meshscale.key import MachinePrivate, NodePrivate, NodePublic
from meshscale.policy import PolicyEngine, PolicyError
from meshscale.relay.app import derp_region, mount_derp
from meshscale.relay.metrics import render
from meshscale.relay.server import DERPServer
from meshscale.relay.stun_server import STUNServer
from meshscale.tailcfg import DERPMap, DERPRegion, from_json

log = logging.getLogger("meshscale.control")
PROG = "meshscale-control"
RECORDS_POLL = 1.0  # seconds between checks of dns.extra_records_path (Headscale: fsnotify)
K = TypeVar("K", MachinePrivate, NodePrivate)
REVOKE_INTERVAL = 0.5  # seconds between re-checks of embedded-relay clients' admission


def load_or_create_key(path: Path, cls: type[K]) -> K:
    """A private key file (``privkey:<hex>``; derper's JSON form is read too), created
    with mode 0600 if missing. The control key must never change (docs/protocol/control.md §1.1)."""
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


def _address(server: Listener) -> tuple[str, int]:
    host, port = server.sockets[0].getsockname()[:2]
    return str(host), int(port)


def _server_port(cfg: ControlConfig) -> int:
    parts = urlsplit(cfg.server_url)
    return parts.port or (443 if parts.scheme == "https" else 80)


class Server:
    """Everything ``serve`` runs; ``start`` then ``close``. Used by tests in-process too."""

    def __init__(self, cfg: ControlConfig) -> None:
        self.cfg = cfg
        self.state: State | None = None
        self.app: ControlApp | None = None
        self.derp: DERPServer | None = None
        self.stun: STUNServer | None = None
        self.http: list[HTTPServer] = []
        self.unix: asyncio.Server | None = None
        # Where each listener ended up: "listen", "metrics", "stun" -> (host, port);
        # "unix" -> the socket path.
        self.bound: dict[str, tuple[str, int] | str] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._embedded_region: DERPRegion | None = None
        self._records_digest = b""
        self.policy_file: PolicyFile | None = None

    async def start(self) -> None:
        cfg = self.cfg
        await self._check_socket_free()  # before touching the state
        cfg.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        db = cfg.database
        if db.type == "sqlite":
            db.sqlite_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            store = open_store(
                db.type,
                path=db.sqlite_path,
                dsn=db.postgres_dsn,
                wal=db.write_ahead_log,
                wal_autocheckpoint=db.wal_autocheckpoint,
            )
        except StoreError as exc:
            raise ConfigError(f"database: {exc}") from exc
        try:
            # With OIDC sign-in, a policy group:NAME it does not define is the IdP's group NAME.
            engine = PolicyEngine(idp_groups=cfg.oidc.enabled)
            self.state = state = State(store, state_options(cfg), policy=engine)
        except PolicyError as exc:  # the stored policy no longer compiles: do not allow all
            store.close()
            raise ConfigError(f"the stored policy cannot be used: {exc}") from exc
        if cfg.policy.mode == "file" and cfg.policy.path is not None:
            self.policy_file = PolicyFile(cfg.policy.path, state)
            self.policy_file.load()  # a bad file: refuse to start

        public = Router()
        writable = cfg.policy.mode == "database"
        api = API(state, policy_writable=writable)
        api.mount(public)
        public.add("GET", "/health", _health)
        mount_verify(public, state)  # for standalone relays' --verify-client-url
        derp_map = await self._start_derp(public)
        self._mount_protocol(public, derp_map)
        assert self.app is not None
        console_for(cfg, state, api, self.app.settings.dns_config(), self.app.derp_map).mount(
            public
        )  # /admin

        server = HTTPServer(public, server_header=PROG, accept_filter=self.app.noise.accept)
        host = cfg.listen_addr.host or None
        srv = await server.start(host, cfg.listen_addr.port, ssl=_tls_context(cfg))
        self.http.append(server)
        self.bound["listen"] = _address(srv)
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
            msrv = await mserver.start(
                cfg.metrics_listen_addr.host or None, cfg.metrics_listen_addr.port
            )
            self.http.append(mserver)
            self.bound["metrics"] = _address(msrv)
        if self.app is not None:
            await self.app.start()
        self._tasks.append(asyncio.create_task(self._maintenance()))
        if self.policy_file is not None:
            self._tasks.append(asyncio.create_task(self.policy_file.watch()))
        if cfg.derp.urls and cfg.derp.auto_update_enabled:
            self._tasks.append(asyncio.create_task(self._refresh_derp_map()))

    def reload_policy(self) -> bool:
        """Reload ``policy.path`` (policy.mode file) on SIGHUP; True if it changed.

        ConfigError if the file cannot be read or the policy is refused (the policy in
        force stays). State publishes PolicyChanged for the nodes whose answers moved,
        and the map batcher sends only them new maps.
        """
        if self.policy_file is None:
            return False
        return self.policy_file.load()

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

    async def _start_derp(self, router: Router) -> DERPMap:
        cfg = self.cfg
        derp_map = await self.build_derp_map()
        if not cfg.derp.server.enabled:
            return derp_map
        ds = cfg.derp.server
        key = load_or_create_key(ds.private_key_path, NodePrivate)
        state = self.state
        assert state is not None

        async def verify(node_key: NodePublic, info: ClientInfo) -> bool:
            return admits(state, node_key)  # same rule as /verify: expired keys are refused

        self.derp = DERPServer(key, verify_client=verify if ds.verify_clients else None)
        mount_derp(router, self.derp)
        if ds.verify_clients:
            self._tasks.append(asyncio.create_task(self._revoke_derp(self.derp, state)))
        stun_port = 3478
        if ds.stun_listen_addr is not None:
            self.stun = STUNServer()
            bound = await self.stun.start(
                ds.stun_listen_addr.host or None, ds.stun_listen_addr.port
            )
            self.bound["stun"] = bound[0]  # [(host, port), ...]: one per address family
            stun_port = int(bound[0][1])
        if ds.automatically_add_embedded_derp_region:
            region = derp_region(
                ds.region_id,
                ds.region_code,
                ds.region_name,
                cfg.server_host,
                _server_port(cfg),
                stun_port,
                ipv4=str(ds.ipv4) if ds.ipv4 else "",
                ipv6=str(ds.ipv6) if ds.ipv6 else "",
            )
            self._embedded_region = from_json(DERPRegion, region)
            derp_map.Regions[ds.region_id] = self._embedded_region
        return derp_map

    async def _revoke_derp(self, derp: DERPServer, state: State) -> None:
        """Admission is checked at login; this drops relay clients whose node has since
        expired or been deleted, within REVOKE_INTERVAL (issue #12)."""
        while True:
            await asyncio.sleep(REVOKE_INTERVAL)
            try:
                n = derp.revoke(lambda k: admits(state, k))
                if n:
                    log.info("derp: dropped %d client(s) no longer admitted", n)
            except Exception:
                log.exception("derp revocation sweep failed")

    async def build_derp_map(self) -> DERPMap:
        """The DERP map from the configured sources and the embedded region (derpmap.py)."""
        return await build_derp_map(self.cfg.derp, self._embedded_region)

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

    def _mount_protocol(self, router: Router, derp_map: DERPMap) -> None:
        assert self.state is not None
        key = load_or_create_key(self.cfg.noise.private_key_path, MachinePrivate)
        if not derp_map.Regions:
            log.warning("no DERP regions: clients will not reach the Running state")
        self.app = build_app(self.state, self.cfg, derp_map, control_key=key)
        self.app.mount(router)
        if self.cfg.dns.extra_records_path is not None:
            self._load_extra_records()
            self._tasks.append(asyncio.create_task(self._watch_extra_records()))

    # ---- DNS: extra_records_path (watched) and SIGHUP reload ----

    def _load_extra_records(self) -> bool:
        """Read dns.extra_records_path into the app if its contents changed; True if so.
        An empty file is ignored (``[]`` clears), a bad one is logged and ignored."""
        path = self.cfg.dns.extra_records_path
        if path is None or self.app is None:
            return False
        try:
            data = path.read_bytes()
        except OSError as exc:
            if self._records_digest != b"missing":
                log.warning("dns.extra_records_path: cannot read %s: %s", path, exc.strerror)
                self._records_digest = b"missing"
            return False
        digest = hashlib.sha256(data).digest()
        if digest == self._records_digest:
            return False
        self._records_digest = digest
        try:
            records = parse_extra_records(data.decode("utf-8", "replace"))
        except ConfigError as exc:
            log.error("%s (keeping the previous records)", exc)
            return False
        if records is None:
            log.info("dns.extra_records_path: %s is empty; keeping the previous records", path)
            return False
        app = self.app
        app.set_settings(
            replace(app.settings, extra_records=tuple((r.name, r.type, r.value) for r in records))
        )
        log.info("dns: %d extra records from %s", len(records), path)
        return True

    async def _watch_extra_records(self) -> None:
        while True:
            await asyncio.sleep(RECORDS_POLL)
            try:
                self._load_extra_records()
            except Exception:
                log.exception("dns.extra_records_path: reload failed")

    def reload_dns(self) -> None:
        """SIGHUP: read the ``dns:`` section of the config file again and push it to every
        node. Raises ConfigError (the running configuration is kept)."""
        if self.cfg.source is None or self.app is None:
            return
        fresh = load_config(self.cfg.source, state_dir=self.cfg.state_dir).dns
        if fresh.extra_records_path != self.cfg.dns.extra_records_path:
            log.warning("dns.extra_records_path changes need a restart; keeping %s",
                        self.cfg.dns.extra_records_path)  # fmt: skip
            fresh = replace(fresh, extra_records_path=self.cfg.dns.extra_records_path)
        self.cfg = replace(self.cfg, dns=fresh)
        app = self.app
        records = app.settings.extra_records if fresh.extra_records_path is not None else None
        app.set_settings(app.settings.with_dns(fresh, records))
        log.info("dns configuration reloaded from %s", self.cfg.source)

    async def _metrics(self, req: Request) -> Response:
        assert self.state is not None
        nodes = self.state.list_nodes()
        batcher = self.app.batcher if self.app is not None else None
        families = [
            Family("meshscale_control_nodes", "gauge", "Registered nodes.", [({}, len(nodes))]),
            Family("meshscale_control_nodes_online", "gauge", "Nodes with a live map stream.",
                   [({}, sum(n.online for n in nodes))]),
            Family("meshscale_control_users", "gauge", "Users.",
                   [({}, len(self.state.list_users()))]),
        ]  # fmt: skip
        if batcher is not None:
            families += [
                Family("meshscale_control_map_sessions", "gauge", "Open map streams.",
                       [({}, batcher.session_count())]),
                Family("meshscale_control_full_maps_total", "counter", "Full maps built.",
                       [({}, batcher.full_maps_built)]),
                Family("meshscale_control_deltas_total", "counter", "Map deltas built.",
                       [({}, batcher.deltas_built)]),
            ]  # fmt: skip
        text = exposition(families)
        if self.derp is not None:
            with contextlib.suppress(Exception):
                text += render(self.derp, self.stun).encode()
        return Response(200, text, [], METRICS_CONTENT_TYPE)

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
        if self.app is not None:
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
