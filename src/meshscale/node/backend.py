"""The node backend (tailscale ipn/ipnlocal, in small pieces): prefs + netmap -> engine.

    LocalAPI --start/down/logout/ping--> Backend --keys, prefs--> StateStore
                                            |--> controlclient.Auto (register, map poll)
    netmap --> peers: WireGuard device (synthetic endpoints, allowed IPs)
                      magicsock core (disco keys, endpoints, home DERP)
                      packet filter;  self addresses: Router (TUN addresses and routes)
    magicsock events --> endpoints / home DERP reported to control

Peer changes are applied as a diff: a peer whose key, endpoints or DERP changed is updated
in place and the others are not touched, so their flows continue.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import socket
import time
from datetime import UTC, datetime
from typing import Any

from meshscale import __version__
from meshscale.disco import AddrPort
from meshscale.dns.config import magic_dns_suffix
from meshscale.filter import Filter, FilterError, filter_inbound, note_outbound
from meshscale.key import DiscoPublic, NodePrivate, NodePublic
from meshscale.magicsock import (
    EndpointsChanged,
    Event,
    HomeDERPChanged,
    NetcheckReportReady,
    PeerConfig,
)
from meshscale.magicsock.netcheck import net_info
from meshscale.tailcfg import Hostinfo, Login, Node, to_json
from meshscale.wgengine import Engine
from meshscale.wgengine.magicbind import MagicBind, peer_endpoint
from meshscale.wgengine.router import Config, NetlinkRouter, Router, ip_forwarding_warning
from meshscale.wireguard.uapi import PeerChange, SetRequest

from . import ipnstate as S
from . import profiles, routing
from .controlclient import Auto, Keys, NetworkMap
from .localapi import BackendError
from .magicdns.manager import MagicDNS
from .portmapper import PortMapperService
from .prefs import Prefs
from .store import LoginInfo, State, StateStore

log = logging.getLogger("meshscale.backend")

LINK_POLL = 0.5  # seconds between checks of local addresses (roaming detection)
TRAFFIC_POLL = 1.0  # seconds between samples of per-peer byte counters
RELAY_READY_WAIT = 10.0  # seconds Running waits for the home DERP connection, at most
RELAY_READY_POLL = 0.02  # seconds


def _addr_text(a: AddrPort) -> str:
    return f"[{a.ip}]:{a.port}" if a.ip.version == 6 else f"{a.ip}:{a.port}"


def _mapping_varies(hostinfo: Any) -> bool | None:
    """A peer's Hostinfo.NetInfo.MappingVariesByDestIP (None if unknown or malformed)."""
    ni = hostinfo.get("NetInfo") if isinstance(hostinfo, dict) else None
    v = ni.get("MappingVariesByDestIP") if isinstance(ni, dict) else None
    return v if isinstance(v, bool) else None


def _ips(addresses: list[str]) -> list[str]:
    return [a.split("/", 1)[0] for a in addresses]


class Backend:
    """Implements localapi.LocalBackend over a real engine (see the module docstring)."""

    def __init__(
        self, store: StateStore, state: State, *, engine: Engine, bind: MagicBind, router: Router,
        magicdns: MagicDNS | None = None,
    ) -> None:  # fmt: skip
        self.store = store
        self.st = state
        self.engine = engine
        self.bind = bind
        self.router = router
        self.magicdns = magicdns
        self.state = S.STOPPED if not state.prefs.WantRunning else S.STARTING
        self.auth_url = ""
        self.health: list[str] = []
        self.netmap = NetworkMap()
        self.auto: Auto | None = None
        self._peer_keys: dict[int, NodePublic] = {}
        self._peer_cfg: dict[NodePublic, tuple[Any, ...]] = {}
        self._traffic: dict[bytes, tuple[int, int, float]] = {}
        self._local_ips: list[Any] = []
        self._link_task: asyncio.Task[None] | None = None
        self._traffic_task: asyncio.Task[None] | None = None
        self._filter: Filter | None = None
        self._filter_key: Any = None
        self._local4: frozenset[bytes] = frozenset()
        self._local6: frozenset[bytes] = frozenset()
        self._ready_task: asyncio.Task[None] | None = None
        self._exit_id = ""  # StableID of the exit node in use ("" none)
        # Inbound packets the filter dropped, per reason (debug()["filter_drops"]).
        self.filter_drops: dict[str, int] = {}
        self.portmapper = PortMapperService(lambda: bind.core.local_port, bind.set_portmapped)
        engine.filter_in = self._filter_in
        engine.filter_out = self._filter_out

    # ---- lifecycle ----

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self._link_task = loop.create_task(self._watch_links())
        self._traffic_task = loop.create_task(self._watch_traffic())
        if self.st.prefs.WantRunning and self.st.prefs.ControlURL:
            self._start_control("")
            self.portmapper.start()

    async def close(self) -> None:
        for task in (self._link_task, self._traffic_task, self._ready_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.portmapper.stop(release=True)
        if self.auto is not None:
            await self.auto.stop()
        # As tailscaled on exit: no policy rules or netfilter table outlive the daemon (the
        # routes go with the TUN device).
        self._clear_addresses()

    def _start_control(self, auth_key: str) -> None:
        keys = Keys(self.st.machine_key, self.st.node_key, self.st.disco_key)
        self.auto = Auto(
            self.st.prefs.ControlURL, keys, hostinfo=self._hostinfo, on_netmap=self._on_netmap,
            on_state=self._on_state, on_login=self._on_login,
        )  # fmt: skip
        eps = self.bind.core.endpoints
        self.auto.update_endpoints([_addr_text(e.addr) for e in eps], [int(e.type) for e in eps])
        self.state = S.STARTING
        self.auto.start(auth_key)

    # ---- LocalBackend ----

    def prefs(self) -> Prefs:
        return self.st.prefs

    async def start(self, prefs: Prefs, auth_key: str, reset: bool) -> None:
        if not prefs.ControlURL:
            raise BackendError("no control server URL (use --login-server)")
        from .controlclient import ControlURLError, parse_control_url

        try:
            parse_control_url(prefs.ControlURL)
        except ControlURLError as exc:
            raise BackendError(str(exc)) from exc
        self._check_route_prefs(prefs)
        if self.auto is not None:
            await self.auto.stop()
            self.auto = None
        prefs.WantRunning = True
        prefs.LoggedOut = False
        self.st.prefs = prefs
        self.store.save(self.st)
        self.health = []
        self.auth_url = ""
        self._start_control(auth_key)
        self.portmapper.start()

    def _check_route_prefs(self, prefs: Prefs) -> None:
        try:
            routing.check_prefs(prefs, self.netmap if self.netmap.self_node else None)
        except routing.RoutingError as exc:
            raise BackendError(str(exc)) from exc
        prefs.AdvertiseRoutes = [str(r) for r in routing.advertised(prefs)]

    async def edit_prefs(self, prefs: Prefs) -> None:
        """``meshscale set``: change prefs without a new login. Route and exit-node changes
        apply at once (Hostinfo goes to control in a lite update); a new control URL or a
        stopped node goes through ``start``."""
        cur = self.st.prefs
        if prefs.ControlURL != cur.ControlURL or self.auto is None or not cur.WantRunning:
            prefs.WantRunning = cur.WantRunning
            if not cur.WantRunning:
                self._check_route_prefs(prefs)
                self.st.prefs = prefs
                self.store.save(self.st)
                return
            await self.start(prefs, "", False)
            return
        self._check_route_prefs(prefs)
        prefs.WantRunning, prefs.LoggedOut = cur.WantRunning, cur.LoggedOut
        if not prefs.ExitNodeIP:
            prefs.ExitNodeID = ""
        self.st.prefs = prefs
        self.store.save(self.st)
        self.auto.update_hostinfo()
        self._apply_netmap_config()

    async def down(self) -> None:
        self.st.prefs.WantRunning = False
        self.store.save(self.st)
        await self._end_session()
        self.state = S.STOPPED

    async def _end_session(self) -> None:
        """No control session, peers, addresses or tailnet DNS (down, logout, switch)."""
        await self.portmapper.stop(release=True)
        if self.auto is not None:
            await self.auto.stop()
            self.auto = None
        self.netmap = NetworkMap()
        self._apply_peers()
        self._clear_addresses()
        if self.magicdns is not None:
            self.magicdns.clear()

    async def logout(self) -> None:
        """Expire the login on the server and forget its profile; the node stays on an empty
        profile that keeps the prefs (so ``meshscale up`` logs in again where it was)."""
        if self.auto is not None:
            await self.auto.logout()
            self.auto = None
        # A logged-out node key is expired on the server; the next login uses a fresh one.
        self.st.old_node_key = self.st.node_key.public()
        self.st.node_key = NodePrivate.generate(os.urandom(32))
        self.st.prefs.WantRunning = False
        self.st.prefs.LoggedOut = True
        self.st.login = LoginInfo()
        profiles.forget_current(self.st)
        self.store.save(self.st)
        await self._end_session()
        await self._use_node_key()
        self.state = S.NEEDS_LOGIN

    async def _use_node_key(self) -> None:
        self.engine.uapi_set(SetRequest(private_key=self.st.node_key.raw))
        await self.bind.set_node_key(self.st.node_key)

    # ---- login profiles (profiles.py) ----

    def profiles(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """(the current profile, every saved one) as tailscale's LoginProfile JSON."""
        return profiles.login_profile(profiles.snapshot(self.st)), profiles.listing(self.st)

    async def switch_profile(self, pid: str | None) -> None:
        """Switch to saved profile ``pid``, or (None) to a new empty one, and connect if that
        profile wants to run."""
        if pid is not None and pid != self.st.current_profile and pid not in self.st.profiles:
            raise BackendError(f"no profile with ID {pid[:32]!r}", 404)
        if pid == self.st.current_profile:
            return
        await self._end_session()
        if pid is None:
            profiles.to_empty(self.st, os.urandom)
        else:
            profiles.switch(self.st, pid)
        self.store.save(self.st)
        await self._use_node_key()
        self.health, self.auth_url = [], ""
        prefs = self.st.prefs
        if prefs.WantRunning and prefs.ControlURL and self.st.login.UserID:
            self._start_control("")
            self.portmapper.start()
        else:
            self.state = S.STOPPED if self.st.login.UserID else S.NEEDS_LOGIN

    async def ping(self, ip: str, wait: float) -> S.PingResult:
        peer = self.netmap.peer_by_ip(ip)
        if peer is None or peer.Key is None:
            raise BackendError(f"no peer with IP {ip}", 404)
        if peer.DiscoKey is None:
            return S.PingResult(IP=ip, NodeIP=ip, Err="peer has no disco key")
        name = (peer.ComputedName or peer.Name.split(".", 1)[0]) or ip
        try:
            lat, via, region = await self.bind.ping(peer.Key, wait)
        except TimeoutError:
            return S.PingResult(IP=ip, NodeIP=ip, NodeName=name, Err="timed out")
        return S.PingResult(
            IP=ip, NodeIP=ip, NodeName=name, LatencySeconds=lat, Endpoint=via,
            DERPRegionID=region, DERPRegionCode=self.bind.region_codes.get(region, ""),
        )  # fmt: skip

    async def netcheck(self) -> dict[str, Any]:
        names = {str(k): v for k, v in self.bind.region_codes.items()}
        return S.netcheck_json(self.bind.report, self.portmapper.have() or {}, names,
                               self.bind.core.home_derp)  # fmt: skip

    def debug(self) -> dict[str, Any]:
        with self.bind.lock:
            ms = dict(self.bind.core.statistics().counters)
        return {
            "magicsock": ms,
            "device_drops": dict(self.engine.device.drops),
            "filter_drops": dict(self.filter_drops),
            "engine_errors": dict(self.engine.errors),
            "magicsock_errors": dict(self.bind.errors),
            "home_derp": self.bind.core.home_derp,
            "derp_connected": sorted(
                r
                for r, rc in (self.bind.derp.regions.items() if self.bind.derp else [])
                if rc.client is not None and rc.client.connected
            ),
            "endpoints": [_addr_text(e.addr) for e in self.bind.core.endpoints],
        }

    def whois(self, ip: str) -> dict[str, Any] | None:
        """By IP, or by node key text ("nodekey:..."; derper --verify-clients asks so)."""
        me = self.netmap.self_node
        if ip.startswith("nodekey:"):
            node = next((p for p in self.netmap.peers.values() if p.Key is not None
                         and p.Key.text() == ip), None)  # fmt: skip
            if node is None and me is not None and me.Key is not None and me.Key.text() == ip:
                node = me
        else:
            node = self.netmap.peer_by_ip(ip)
            if node is None and me is not None and ip in _ips(me.Addresses):
                node = me
        if node is None:
            return None
        up = self.netmap.user_profiles.get(node.User)
        return {"Node": to_json(node), "UserProfile": to_json(up) if up else {"ID": node.User}}

    def status(self) -> S.Status:
        st = S.Status(Version=__version__, BackendState=self.state, AuthURL=self.auth_url)
        st.HaveNodeKey = True
        st.Health = list(self.health)
        if self.magicdns is not None:
            st.Health += self.magicdns.health
        if self.auto is not None and self.auto.last_error and self.state == S.RUNNING:
            st.Health.append(f"control: {self.auto.last_error}")
        me = self.netmap.self_node
        if me is None or self.state in (S.STOPPED, S.NEEDS_LOGIN):
            return st
        st.TailscaleIPs = _ips(me.Addresses)
        st.MagicDNSSuffix = magic_dns_suffix(me.Name) or self.netmap.domain
        st.TailnetName = self.netmap.domain
        st.MagicDNSEnabled = bool(self.netmap.dns is not None and self.netmap.dns.Proxied)
        st.Self = self._peer_status(me, is_self=True)
        with self.bind.lock:
            hn = self.bind.core.hardnat
            b, c = hn.budget, hn.stats
            st.HardNATProbes = {
                "Enabled": b.enabled, "BudgetPackets": b.packets, "BudgetSeconds": b.seconds,
                "Ports": b.ports, "Attempts": c.attempts, "Sent": c.sent,
                "Successes": c.successes, "GaveUp": c.gave_up, "Stopped": c.stopped,
                "SocketsOpen": len(hn.sockets()),
            }  # fmt: skip
        now = time.monotonic()
        for p in self.netmap.peers.values():
            if p.Key is None:
                continue
            st.Peer[p.Key.text()] = self._peer_status(p, now=now)
        for uid, up in self.netmap.user_profiles.items():
            st.User[uid] = S.UserProfile(uid, up.LoginName, up.DisplayName)
        return st

    def _peer_status(self, n: Node, *, is_self: bool = False, now: float = 0.0) -> S.PeerStatus:
        hi = n.Hostinfo if isinstance(n.Hostinfo, dict) else {}
        ps = S.PeerStatus(
            ID=n.StableID or str(n.ID), PublicKey=n.Key.text() if n.Key else "",
            HostName=str(hi.get("Hostname") or n.ComputedName or n.Name.split(".", 1)[0]),
            DNSName=n.Name, OS=str(hi.get("OS") or ""), UserID=n.User,
            TailscaleIPs=_ips(n.Addresses), AllowedIPs=list(n.AllowedIPs or n.Addresses),
            Addrs=list(n.Endpoints), Created=n.Created, LastSeen=n.LastSeen, KeyExpiry=n.KeyExpiry,
            InNetworkMap=True,
        )  # fmt: skip
        ps.AltSharerUserID = n.Sharer
        ps.ExitNodeOption = not is_self and routing.offers_exit(n.AllowedIPs or [])
        ps.ExitNode = bool(self._exit_id) and self._exit_id in (n.StableID, str(n.ID))
        ps.Tags = list(n.Tags)
        ps.PrimaryRoutes = list(n.PrimaryRoutes)
        ps.PeerAPIURL = S.peerapi_urls(hi, ps.TailscaleIPs)
        if self.state == S.RUNNING:
            ps.TaildropTarget = S.TAILDROP_MISSING_CAP
        if is_self:
            ps.CapMap = dict(n.CapMap)
            ps.TaildropTarget = 0  # tailscale leaves it unset on Self
            ps.Online = True
            ps.Relay = self.bind.region_codes.get(self.bind.core.home_derp, "")
            ps.OS = ps.OS or "linux"
            return ps
        ps.Online = n.Online is not False
        ps.Relay = self.bind.region_codes.get(n.HomeDERP, str(n.HomeDERP) if n.HomeDERP else "")
        if n.Key is None:
            return ps
        with self.bind.lock:
            pst = self.bind.core.peer_status(n.Key, now)
        ps.InMagicSock = pst is not None
        if pst is not None and pst.best is not None and pst.trusted:
            ps.CurAddr = _addr_text(pst.best)
        dev_peer = self.engine.device.peers.get(n.Key.raw)
        if dev_peer is not None:
            ps.InEngine = True
            ps.RxBytes, ps.TxBytes = int(dev_peer.rx_bytes), int(dev_peer.tx_bytes)
            if dev_peer.last_handshake_ns:
                ps.LastHandshake = datetime.fromtimestamp(dev_peer.last_handshake_ns / 1e9, UTC)
            self._note_traffic(n.Key.raw, ps.RxBytes, ps.TxBytes, now)
            last = self._traffic[n.Key.raw][2]
            ps.Active = bool(last) and now - last < S.ACTIVE_WINDOW
            if ps.Active:
                ps.LastWrite = datetime.now(UTC)
        return ps

    def _note_traffic(self, key: bytes, rx: int, tx: int, now: float) -> None:
        prev = self._traffic.get(key)
        if prev is None or (prev[0], prev[1]) != (rx, tx):
            changed_at = now if prev is not None or rx or tx else 0.0
            self._traffic[key] = (rx, tx, changed_at)

    async def _watch_traffic(self) -> None:
        """Sample byte counters so "active" means traffic in the last ACTIVE_WINDOW seconds,
        however rarely status is asked for."""
        while True:
            now = time.monotonic()
            for key, p in list(self.engine.device.peers.items()):
                self._note_traffic(key, int(p.rx_bytes), int(p.tx_bytes), now)
            for key in [k for k in self._traffic if k not in self.engine.device.peers]:
                del self._traffic[key]
            await asyncio.sleep(TRAFFIC_POLL)

    # ---- control callbacks ----

    def _hostinfo(self) -> Hostinfo:
        ni = net_info(self.bind.report, self.bind.core.home_derp)
        if (have := self.portmapper.have()) is not None:
            ni.UPnP, ni.PMP, ni.PCP = have["UPnP"], have["PMP"], have["PCP"]
            ni.HavePortMap = self.portmapper.mapped is not None
        name = self.st.prefs.Hostname or socket.gethostname()
        routes = [str(r) for r in routing.advertised(self.st.prefs)]
        return Hostinfo(
            IPNVersion=__version__,
            OS="linux",
            Hostname=name,
            NetInfo=ni,
            RequestTags=list(self.st.prefs.AdvertiseTags),
            RoutableIPs=routes,
        )

    def _on_state(self, state: str, auth_url: str, error: str) -> None:
        if error:
            self.health = [error]
        self.auth_url = auth_url
        if state != S.STARTING or self.state != S.RUNNING:
            self.state = state
        if state == S.NEEDS_LOGIN and self.magicdns is not None:
            self.magicdns.clear()  # as tailscaled: no tailnet DNS while logged out

    def _on_login(self, login: Login) -> None:
        self.st.login = LoginInfo(login.LoginName, login.DisplayName, login.ID)
        try:
            profiles.on_login(self.st, os.urandom)
        except profiles.ProfileError as exc:
            self.health = [f"profiles: {exc}"]
        self.store.save(self.st)

    def _on_netmap(self, nm: NetworkMap) -> None:
        self.netmap = nm
        me = nm.self_node
        if nm.domain and nm.domain != self.st.tailnet:
            self.st.tailnet = nm.domain  # the profile list names the tailnet
            self.store.save(self.st)
        self.bind.set_derp_map(nm.derp_map)
        self._apply_netmap_config()
        if me is not None and me.MachineAuthorized:
            if self.state != S.RUNNING and not self._relay_ready():
                # Running means usable: wait (bounded) for the home DERP connection, so the
                # first packet to a relay-only peer does not hit a relay still connecting.
                if self._ready_task is None or self._ready_task.done():
                    self._ready_task = asyncio.get_running_loop().create_task(
                        self._running_when_relay_ready()
                    )
                return
            self._set_running()
        elif me is not None:
            self.state = S.NEEDS_MACHINE_AUTH

    def _apply_netmap_config(self) -> None:
        """Peers, OS routes and the filter for the netmap and prefs in force."""
        prefs, nm = self.st.prefs, self.netmap
        self._exit_id = routing.resolve_exit_node(prefs, nm)
        if nm.self_node is not None:
            try:
                self.router.set(routing.router_config(prefs, nm, self._exit_id))
            except OSError as exc:
                self.health = [f"router: {exc}"]
                log.error("configuring %s: %s", self.router.ifname, exc)
        self._apply_peers()
        self._apply_filter()
        if self.magicdns is not None:
            self.magicdns.set_netmap(nm.dns, nm.self_node, nm.peers.values(),
                                     accept_dns=prefs.CorpDNS)  # fmt: skip
        self.health = [h for h in self.health if not h.startswith(routing.HEALTH_PREFIXES)]
        fwd = ip_forwarding_warning(any(r.version == 6 for r in routing.advertised(prefs)))
        self.health.extend(routing.health(prefs, nm, self._exit_id, fwd))

    def _relay_ready(self) -> bool:
        """The home DERP region is chosen and connected (or there is no DERP at all)."""
        derp = self.bind.derp
        if derp is None or self.bind.loop is None or not self.netmap.derp_map.Regions:
            return True  # no relay configured, or the bind is not running (nothing to wait for)
        rc = derp.regions.get(self.bind.core.home_derp)
        return rc is not None and rc.client is not None and rc.client.connected

    async def _running_when_relay_ready(self) -> None:
        # Polled: the home region itself may still change (netcheck) while we wait.
        for _ in range(int(RELAY_READY_WAIT / RELAY_READY_POLL)):
            if self._relay_ready():
                break
            await asyncio.sleep(RELAY_READY_POLL)
        if not self._relay_ready():
            self.health = [*self.health, "no DERP relay connection: relayed peers unreachable"]
            log.warning("home DERP not connected after %.0f s; running anyway", RELAY_READY_WAIT)
        me = self.netmap.self_node
        if self.state == S.STARTING and me is not None and me.MachineAuthorized:
            self._set_running()

    def _set_running(self) -> None:
        self.state = S.RUNNING
        self.auth_url = ""
        self.health = [h for h in self.health if not h.startswith("login:")]

    def _clear_addresses(self) -> None:
        """Down or logged out: the interface stays, without tailnet addresses."""
        try:
            self.router.set(Config())
        except OSError as exc:
            log.warning("clearing %s: %s", self.router.ifname, exc)

    def _apply_peers(self) -> None:
        """Diff the netmap's peers into the WireGuard device and the magicsock core."""
        want: dict[NodePublic, tuple[Any, ...]] = {}
        configs: list[PeerConfig] = []
        for p in self.netmap.peers.values():
            if p.Key is None:
                continue
            allowed = routing.peer_allowed_ips(p, self.st.prefs, self._exit_id)
            want[p.Key] = allowed, p.DiscoKey
            if p.DiscoKey is not None and not p.DiscoKey.is_zero():
                eps = tuple(_parse_ap(e) for e in p.Endpoints)
                configs.append(PeerConfig(
                    p.Key, p.DiscoKey, tuple(e for e in eps if e), p.HomeDERP,
                    _mapping_varies(p.Hostinfo),
                ))  # fmt: skip
        changes: list[PeerChange] = [
            PeerChange(public_key=k.raw, remove=True) for k in self._peer_cfg if k not in want
        ]
        for k, cfg in want.items():
            prev = self._peer_cfg.get(k)
            if prev == cfg:
                continue
            if prev is not None and prev[1] != cfg[1]:
                # A new disco key means the peer restarted and lost its sessions: drop ours
                # so the next packet starts a fresh handshake (tailscale does the same).
                changes.append(PeerChange(public_key=k.raw, remove=True))
            nets = [ipaddress.ip_network(a, strict=False) for a in cfg[0]]
            changes.append(PeerChange(
                public_key=k.raw, endpoint=peer_endpoint(k), replace_allowed_ips=True,
                allowed_ips_add=nets,
            ))  # fmt: skip
        self._peer_cfg = want
        if changes:
            self.engine.uapi_set(SetRequest(peers=changes))
        self.bind.set_peers(configs)

    def _apply_filter(self) -> None:
        me = self.netmap.self_node
        rules = self.netmap.filter_rules()
        local = _ips(me.Addresses) if me is not None else []
        nets = routing.filter_local_nets(self.st.prefs, local) if local else []
        jailed = routing.jailed_nets(self.netmap.peers.values())
        key = (tuple(str(to_json(r)) for r in rules), tuple(nets), jailed)
        if key == self._filter_key:
            return
        self._filter_key = key
        self._local4 = frozenset(ipaddress.ip_address(a).packed for a in local if "." in a)
        self._local6 = frozenset(ipaddress.ip_address(a).packed for a in local if ":" in a)
        try:
            self._filter = Filter(rules, nets, jailed=jailed)
        except FilterError as exc:
            log.error("packet filter refused: %s", exc)
            self._filter = Filter([], nets, jailed=jailed)

    def _filter_in(self, packets: list[bytes]) -> list[bytes]:
        f = self._filter
        if f is None:
            return []
        return filter_inbound(f, self._local4, self._local6, packets, self.filter_drops)

    def _filter_out(self, packets: list[bytes]) -> list[bytes]:
        f = self._filter
        if f is not None:
            note_outbound(f, packets)
        return packets

    # ---- magicsock events and links ----

    def on_magicsock_event(self, ev: Event) -> None:
        if isinstance(ev, EndpointsChanged | HomeDERPChanged | NetcheckReportReady):
            eps = self.bind.core.endpoints
            if self.auto is not None:
                self.auto.update_endpoints(
                    [_addr_text(e.addr) for e in eps], [int(e.type) for e in eps]
                )

    async def _watch_links(self) -> None:
        while True:
            try:
                ips = await asyncio.to_thread(NetlinkRouter.local_addresses, self.router.ifname)
            except Exception as exc:  # netlink trouble must not end roaming detection
                log.debug("listing addresses: %s", exc)
                ips = self._local_ips
            if ips != self._local_ips:
                first = not self._local_ips
                self._local_ips = ips
                self.bind.set_local_addresses(ips)
                if not first:
                    log.info("network changed: %s", [str(i) for i in ips])
                    self.bind.note_network_change()
                    self.portmapper.restart()
            await asyncio.sleep(LINK_POLL)


def _parse_ap(text: str) -> AddrPort | None:
    try:
        host, _, port = text.rpartition(":")
        return AddrPort(ipaddress.ip_address(host.strip("[]")), int(port))
    except ValueError:
        return None


__all__ = ["Backend", "DiscoPublic"]
