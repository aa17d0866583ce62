"""Wiring of the control protocol: ``build_app(state, config, derp_map, ...)``.

Public router (HTTP/1.1, plain or TLS, mounted by ``meshscale-control serve``)::

    GET  /key?v=N          control key (docs/protocol/control.md §1.1)
    *    /ts2021           Noise upgrade, then HTTP/2 inside (docs/protocol/control.md §2)
    GET  /register/<id>    page telling the admin the ``nodes register`` command

Noise router (HTTP/2 inside the Noise connection; every handler sees the machine key)::

    POST /machine/register     register.RegisterHandler
    POST /machine/map          poll.MapHandler
    /machine/{set-dns,id-token,audit-log,set-device-attr,feature/query,update-health,whoami}
                               501, as Headscale (docs/protocol/control.md §5)
    anything else              404

Usage (what ``meshscale-control serve`` does)::

    app = build_app(state, control_config, derp_map, control_key=machine_private_key)
    app.mount(router)            # or serve app.router directly
    await app.start()            # change pump + key-expiry watcher
    ...
    app.set_derp_map(new_map)    # every session gets a full map
    await app.close()

Background tasks (started by ``start`` or lazily by the first Noise request): the pump that
feeds State change events to the batcher, and a watcher that announces key expiries as they
pass (an expiry is a point in time, not a write).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TypedDict, Unpack
from urllib.parse import urlsplit

from meshscale.control.auth import REGISTER_PATH, RegisterHandler, register_page
from meshscale.control.auth.pages import OIDCPages, oidc_pages
from meshscale.control.config import ControlConfig
from meshscale.control.config import DNSConfig as DNSSettings
from meshscale.control.mapper import Batcher, MapHandler, SnapshotSource, mapper
from meshscale.control.mapper.poll import BATCH_DELAY, KEEPALIVE_INTERVAL, OFFLINE_GRACE
from meshscale.control.models import ChangeSubscription, DNSChanged, NodeChanged
from meshscale.control.state import State
from meshscale.controlhttp import (
    NoiseHandler,
    NoiseLimits,
    NoiseRequest,
    NoiseUpgrade,
    key_response,
)
from meshscale.io.http import Request, Response, Router
from meshscale.key import MachinePrivate
from meshscale.tailcfg import DERPMap, DNSConfig, DNSRecord, Resolver

log = logging.getLogger(__name__)

SUBSCRIPTION_QUEUE = 1 << 16  # change events buffered between pump runs

NOT_IMPLEMENTED = frozenset(
    {
        "/machine/set-dns",
        "/machine/id-token",
        "/machine/audit-log",
        "/machine/set-device-attr",
        "/machine/feature/query",
        "/machine/update-health",
        "/machine/whoami",
        "/machine/c2n",
    }
)


class Timers(TypedDict, total=False):
    """The AppSettings a caller may override by keyword (tests shorten the timers)."""

    keepalive_interval: float
    offline_grace: float
    batch_delay: float
    expiry_check_interval: float
    send_early_payload: bool


@dataclass(frozen=True, slots=True)
class AppSettings:
    """The configuration the protocol layer reads (``from_config`` maps ControlConfig)."""

    server_url: str
    base_domain: str = ""
    magic_dns: bool = True
    nameservers: tuple[str, ...] = ()
    split_nameservers: dict[str, tuple[str, ...]] = field(default_factory=dict)
    search_domains: tuple[str, ...] = ()
    override_local_dns: bool = False
    extra_records: tuple[tuple[str, str, str], ...] = ()  # (name, type, value)
    prefixes: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    keepalive_interval: float = KEEPALIVE_INTERVAL
    offline_grace: float = OFFLINE_GRACE
    batch_delay: float = BATCH_DELAY
    send_early_payload: bool = True
    expiry_check_interval: float = 5.0  # seconds between key-expiry sweeps
    logtail_enabled: bool = False

    @classmethod
    def from_config(cls, config: ControlConfig, **overrides: Unpack[Timers]) -> AppSettings:
        """From the server configuration; ``overrides`` replace fields (timers in tests)."""
        dns = config.dns
        prefixes = tuple(p for p in (config.prefixes.v4, config.prefixes.v6) if p is not None)
        s = cls(
            server_url=config.server_url,
            base_domain=dns.base_domain,
            magic_dns=dns.magic_dns,
            nameservers=tuple(dns.nameservers_global),
            split_nameservers={k: tuple(v) for k, v in dns.nameservers_split.items()},
            search_domains=tuple(dns.search_domains),
            override_local_dns=dns.override_local_dns,
            extra_records=tuple((r.name, r.type, r.value) for r in dns.extra_records),
            prefixes=prefixes,
            logtail_enabled=config.logtail_enabled,
        )
        return replace(s, **overrides)

    def with_dns(
        self, dns: DNSSettings, extra_records: tuple[tuple[str, str, str], ...] | None = None
    ) -> AppSettings:
        """These settings with the ``dns:`` section replaced (SIGHUP reload); the records
        from extra_records_path when given."""
        records = tuple((r.name, r.type, r.value) for r in dns.extra_records)
        return replace(
            self, base_domain=dns.base_domain, magic_dns=dns.magic_dns,
            nameservers=tuple(dns.nameservers_global),
            split_nameservers={k: tuple(v) for k, v in dns.nameservers_split.items()},
            search_domains=tuple(dns.search_domains), override_local_dns=dns.override_local_dns,
            extra_records=records if extra_records is None else extra_records,
        )  # fmt: skip

    def dns_config(self) -> DNSConfig:
        cfg = mapper.build_dns_config(
            self.base_domain,
            magic_dns=self.magic_dns,
            nameservers=self.nameservers,
            search_domains=self.search_domains,
            override_local_dns=self.override_local_dns,
            prefixes=self.prefixes,
        )
        for suffix, servers in self.split_nameservers.items():
            cfg.Routes[suffix] = [Resolver(Addr=a) for a in servers]
        cfg.ExtraRecords = [DNSRecord(Name=n, Type=t, Value=v) for n, t, v in self.extra_records]
        if self.magic_dns:
            # A record outside the base domain needs its own local route, or clients with
            # native split DNS (systemd-resolved) never ask quad-100 for it (hs#1206). The
            # route is the name itself, so its siblings still resolve upstream.
            base = self.base_domain.strip(".").lower()
            for name, _, _ in self.extra_records:
                n = name.strip(".").lower()
                if n and n != base and not n.endswith("." + base):
                    cfg.Routes.setdefault(n, [])
        return cfg


def utcnow() -> datetime:
    return datetime.now(UTC)


class ControlApp:
    """The protocol side of the control server. ``router`` is what ``serve`` mounts."""

    def __init__(
        self,
        state: State,
        settings: AppSettings,
        derp_map: DERPMap,
        control_key: MachinePrivate,
        *,
        clock: Callable[[], datetime] = utcnow,
        rand: Callable[[int], bytes] = os.urandom,
        oidc: OIDCPages | None = None,
        limits: NoiseLimits | None = None,
    ) -> None:
        derp_map.validate()
        self.state = state
        self.oidc = oidc
        self.settings = settings
        self.derp_map = derp_map
        self.control_key = control_key
        self.clock = clock
        self.rand = rand
        self._dns = settings.dns_config()
        self._map_config: mapper.MapConfig | None = None
        self.batcher = Batcher(SnapshotSource(state), self.map_config)
        self.register = RegisterHandler(state, settings.server_url, clock)
        self.map = MapHandler(
            state,
            self.batcher,
            clock,
            jitter=lambda: int.from_bytes(rand(2), "big") / 65536,
            keepalive_interval=settings.keepalive_interval,
            offline_grace=settings.offline_grace,
            batch_delay=settings.batch_delay,
        )
        self.noise = NoiseUpgrade(
            control_key,
            self.dispatch,
            rand=rand,
            send_early_payload=settings.send_early_payload,
            limits=limits,
            is_node=lambda mk: state.get_node_by_machine_key(mk) is not None,
        )
        self._routes: dict[tuple[str, str], NoiseHandler] = {
            ("POST", "/machine/register"): self.register,
            ("POST", "/machine/map"): self.map,
        }
        self._pump: asyncio.Task[None] | None = None
        self._expiry_task: asyncio.Task[None] | None = None
        self._subscription: ChangeSubscription | None = None
        self.router = Router()
        self.mount(self.router)

    def map_config(self) -> mapper.MapConfig:
        """The current MapConfig; rebuilt only when the DERP map changes."""
        cached = self._map_config
        if cached is not None and cached.derp_map is self.derp_map:
            return cached
        self._map_config = mapper.MapConfig(
            base_domain=self.settings.base_domain,
            domain=urlsplit(self.settings.server_url).hostname or self.settings.base_domain,
            derp_map=self.derp_map,
            dns_config=self._dns,
            disable_log_tail=not self.settings.logtail_enabled,
        )
        return self._map_config

    def current_dns(self) -> DNSConfig:
        """The DNSConfig every node gets now."""
        return self._dns

    def set_settings(self, settings: AppSettings) -> None:
        """New DNS settings (SIGHUP, extra_records_path changed): every session gets the
        full DNSConfig in its next map (a DNSConfig always replaces the client's)."""
        dns = settings.dns_config()
        self.settings = settings
        if dns == self._dns:
            return
        self._dns = dns
        self._map_config = None
        self.batcher.handle(DNSChanged())

    def set_derp_map(self, derp_map: DERPMap) -> None:
        """Replace the DERP map; every session gets a full map."""
        derp_map.validate()
        self.derp_map = derp_map
        self.batcher.handle(DNSChanged())

    def mount(self, router: Router) -> None:
        key = self.control_key.public()

        async def key_handler(req: Request) -> Response:
            return key_response(key, req.query.get("v"))

        router.add("GET", "/key", key_handler)
        router.add_upgrade("/ts2021", self.noise)
        if self.oidc is not None:
            self.oidc.mount(router)
        else:
            router.add_prefix("GET", REGISTER_PATH, register_page(self.state))

    async def dispatch(self, req: NoiseRequest) -> Response:
        self._ensure_pump()
        handler = self._routes.get((req.method, req.path))
        if handler is not None:
            return await handler(req)
        if req.path in NOT_IMPLEMENTED:
            return Response.text(501, "not implemented\n")
        if any(p == req.path for (_, p) in self._routes):
            return Response.text(405, "method not allowed\n")
        return Response.text(404, "not found\n")

    # ---- change pump -------------------------------------------------------------------

    async def start(self) -> None:
        self._ensure_pump()
        self.noise.start()

    def _ensure_pump(self) -> None:
        if self._pump is None or self._pump.done():
            if self._subscription is not None:
                self._subscription.close()
            # Sized for bursts (a restart reconnecting every node); overflow means a full map
            # for every session, which at scale is the expensive path.
            self._subscription = self.state.subscribe(max_queue=SUBSCRIPTION_QUEUE)
            loop = asyncio.get_running_loop()
            self._pump = loop.create_task(self._run_pump())
            self.batcher.sync = self._drain
        if self._expiry_task is None or self._expiry_task.done():
            self._expiry_task = asyncio.get_running_loop().create_task(self._watch_expiry())

    def _drain(self) -> None:
        sub = self._subscription
        if sub is None:
            return
        for event in sub.drain():
            self.batcher.handle(event)

    async def _run_pump(self) -> None:
        sub = self._subscription
        assert sub is not None, "the pump runs only with a subscription"
        try:
            async for event in sub:
                try:
                    self.batcher.handle(event)
                except Exception:  # one bad event must not stop all updates
                    log.exception("batcher failed on %r", event)
        except asyncio.CancelledError:
            raise

    async def _watch_expiry(self) -> None:
        """Key expiry is a point in time, not a write: tell sessions when a key passes it, so
        the node sees NeedsLogin and its peers mark it expired (docs/protocol/control.md §4.5)."""
        last = self.clock()
        while True:
            await asyncio.sleep(self.settings.expiry_check_interval)
            now = self.clock()
            for n in self.state.list_nodes():
                if n.expiry is not None and last < n.expiry <= now:
                    self.batcher.handle(NodeChanged(n.id, frozenset({"expiry"})))
            last = now

    async def close(self) -> None:
        self.map.close()
        await self.noise.close()
        if self._expiry_task is not None:
            self._expiry_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._expiry_task
            self._expiry_task = None
        if self._pump is not None:
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._pump
            self._pump = None
        if self._subscription is not None:
            with contextlib.suppress(Exception):
                self._subscription.close()
            self._subscription = None


def build_app(
    state: State,
    config: ControlConfig | AppSettings,
    derp_map: DERPMap,
    *,
    control_key: MachinePrivate,
    clock: Callable[[], datetime] = utcnow,
    rand: Callable[[int], bytes] = os.urandom,
    limits: NoiseLimits | None = None,
    **overrides: Unpack[Timers],
) -> ControlApp:
    """Everything the protocol side serves. ``config`` is a ControlConfig or AppSettings;
    ``overrides`` replace AppSettings fields (timers in tests). Mount ``app.router``."""
    settings = config if isinstance(config, AppSettings) else AppSettings.from_config(config)
    if overrides:
        settings = replace(settings, **overrides)
    oidc = oidc_pages(config, state) if isinstance(config, ControlConfig) else None
    return ControlApp(
        state, settings, derp_map, control_key, clock=clock, rand=rand, oidc=oidc, limits=limits
    )
