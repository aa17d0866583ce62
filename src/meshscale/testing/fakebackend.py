"""A scripted LocalBackend for tests of the local API and the CLI (no network, no TUN), and
a local API served from a background thread for synchronous tests."""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from meshscale.node.ipnstate import (
    NEEDS_LOGIN,
    RUNNING,
    STOPPED,
    PeerStatus,
    PingResult,
    Status,
    UserProfile,
)
from meshscale.node.localapi import BackendError, LocalAPI, LocalBackend
from meshscale.node.prefs import Prefs


class FakeBackend:
    """Answers like a node with two peers: ``alpha`` direct and ``beta`` relayed."""

    def __init__(self) -> None:
        self._prefs = Prefs()
        self.state = STOPPED
        self.auth_url = ""
        self.calls: list[tuple[str, Any]] = []
        self.interactive = False  # start() without a key waits at NeedsLogin
        self.health: list[str] = []

    def status(self) -> Status:
        st = Status(Version="0.1.0", BackendState=self.state, AuthURL=self.auth_url)
        st.HaveNodeKey = True
        st.Health = list(self.health)
        if self.state != RUNNING:
            return st
        st.TailscaleIPs = ["100.64.0.1", "fd7a:115c:a1e0::1"]
        st.MagicDNSSuffix = "lab.meshscale"
        st.Self = PeerStatus(ID="1", PublicKey="nodekey:" + "11" * 32, HostName="me",
                             DNSName="me.lab.meshscale.", OS="linux", UserID=1,
                             TailscaleIPs=list(st.TailscaleIPs), Online=True)  # fmt: skip
        hs = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
        st.Peer["nodekey:" + "22" * 32] = PeerStatus(
            ID="2", PublicKey="nodekey:" + "22" * 32, HostName="alpha",
            DNSName="alpha.lab.meshscale.", OS="linux", UserID=1,
            TailscaleIPs=["100.64.0.2", "fd7a:115c:a1e0::2"], CurAddr="203.0.113.10:41641",
            Relay="lab", RxBytes=1000, TxBytes=2000, LastHandshake=hs, Online=True, Active=True,
        )  # fmt: skip
        st.Peer["nodekey:" + "33" * 32] = PeerStatus(
            ID="3", PublicKey="nodekey:" + "33" * 32, HostName="beta",
            DNSName="beta.lab.meshscale.", OS="linux", UserID=1,
            TailscaleIPs=["100.64.0.3"], Relay="lab", RxBytes=10, TxBytes=20, Online=True,
            Active=True,
        )  # fmt: skip
        st.Peer["nodekey:" + "44" * 32] = PeerStatus(
            ID="4", PublicKey="nodekey:" + "44" * 32, HostName="gamma",
            DNSName="gamma.lab.meshscale.", OS="linux", UserID=1, TailscaleIPs=["100.64.0.4"],
        )  # fmt: skip
        st.User[1] = UserProfile(1, "alice@example.com", "Alice")
        return st

    def prefs(self) -> Prefs:
        return self._prefs

    async def start(self, prefs: Prefs, auth_key: str, reset: bool) -> None:
        self.calls.append(("start", (prefs, auth_key, reset)))
        if not prefs.ControlURL:
            raise BackendError("no control server URL")
        self._prefs = prefs
        if auth_key or not self.interactive:
            self.state = RUNNING
        else:
            self.state = NEEDS_LOGIN
            self.auth_url = prefs.ControlURL + "/register/abc"

    async def edit_prefs(self, prefs: Prefs) -> None:
        # The fake has no control session to keep: `set` lands where `start` does.
        await self.start(prefs, "", False)

    async def down(self) -> None:
        self.calls.append(("down", None))
        self._prefs.WantRunning = False
        self.state = STOPPED

    async def logout(self) -> None:
        self.calls.append(("logout", None))
        self.state = NEEDS_LOGIN

    async def ping(self, ip: str, wait: float) -> PingResult:
        self.calls.append(("ping", ip))
        if ip == "100.64.0.2":
            return PingResult(IP=ip, NodeIP=ip, NodeName="alpha", LatencySeconds=0.0012,
                              Endpoint="203.0.113.10:41641")  # fmt: skip
        if ip == "100.64.0.3":
            return PingResult(IP=ip, NodeIP=ip, NodeName="beta", LatencySeconds=0.004,
                              DERPRegionID=900, DERPRegionCode="lab")  # fmt: skip
        return PingResult(IP=ip, Err="timed out")

    def profiles(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        return {"ID": "", "Name": ""}, []

    async def switch_profile(self, pid: str | None) -> None:
        self.calls.append(("switch_profile", pid))
        if pid is not None:
            raise BackendError(f"no profile with ID {pid!r}", 404)
        self._prefs, self.state = Prefs(), NEEDS_LOGIN

    async def netcheck(self) -> dict[str, Any]:
        return {"UDP": True, "GlobalV4": "203.0.113.20:41641", "PreferredDERP": 900,
                "RegionLatency": {"900": 0.0015}, "RegionNames": {"900": "lab"}}  # fmt: skip

    def whois(self, ip: str) -> dict[str, Any] | None:
        if ip != "100.64.0.2":
            return None
        return {"Node": {"ID": 2, "StableID": "n2", "Name": "alpha.lab.meshscale.",
                         "Addresses": ["100.64.0.2/32"]},
                "UserProfile": {"ID": 1, "LoginName": "alice@example.com"}}  # fmt: skip


class ThreadedLocalAPI:
    """Serve a LocalAPI on a unix socket from a background thread (for sync tests and tools).

    Use as a context manager; the server is up when ``__enter__`` returns.
    """

    def __init__(self, backend: LocalBackend, path: Path) -> None:
        self.backend = backend
        self.path = path
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._api = LocalAPI(backend)

    def __enter__(self) -> ThreadedLocalAPI:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._api.start(self.path), self._loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._api.close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
