"""The node's control loop (tailscale control/controlclient/auto.go): keep a session up.

    connect -> register (auth key | fast path for a known node key | AuthURL + followup wait)
            -> map long poll: full netmap, then deltas and keep-alives
            -> endpoint / home DERP changes go out as lite map requests on the same session
    any failure: close, back off (bounded), start again. The netmap and everything built from
    it stay in place meanwhile, so established peers keep talking while control is away.

Callbacks run on the event loop: ``on_netmap(netmap)`` after every change, ``on_state(state,
auth_url, error)`` with the backend states NeedsLogin / Starting / Running.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

from meshscale.key import DiscoPrivate, MachinePrivate, NodePrivate
from meshscale.tailcfg import LOGOUT_EXPIRY, Hostinfo, Login, RegisterResponse

from .direct import ClientError, ControlURLError, Direct
from .netmap import NetworkMap

log = logging.getLogger("meshscale.controlclient")

BACKOFF_MIN = 0.25  # seconds
BACKOFF_MAX = 5.0  # seconds: a returning control server is found within this
# seconds: keep-alives come at least every 120 s (docs/protocol/control.md §4.2)
MAP_READ_TIMEOUT = 130.0
DIAL_TIMEOUT = 10.0  # seconds for /key, the upgrade and the handshake


@dataclass(slots=True)
class Keys:
    machine: MachinePrivate
    node: NodePrivate
    disco: DiscoPrivate


class LoginError(Exception):
    """Control refused the login; retrying will not help until the user acts."""


class Auto:
    def __init__(
        self,
        url: str,
        keys: Keys,
        *,
        hostinfo: Callable[[], Hostinfo],
        on_netmap: Callable[[NetworkMap], None],
        on_state: Callable[[str, str, str], None],
        on_login: Callable[[Login], None] | None = None,
        rand: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.url = url
        self.keys = keys
        self._hostinfo = hostinfo
        self._on_netmap = on_netmap
        self._on_state = on_state
        self._on_login = on_login
        self._rand = rand
        self.netmap = NetworkMap()
        self.auth_key = ""
        self.endpoints: list[str] = []
        self.endpoint_types: list[int] = []
        self._direct: Direct | None = None
        self._task: asyncio.Task[None] | None = None
        self._update_pending = asyncio.Event()
        self.connected = False
        self.last_error = ""

    # ---- lifecycle ----

    def start(self, auth_key: str = "") -> None:
        self.auth_key = auth_key
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="controlclient")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self._close_direct()
        self.connected = False

    async def logout(self) -> None:
        """Expire our node key on the server (best effort), then stop."""
        await self.stop()
        d = self._new_direct()
        try:
            async with asyncio.timeout(DIAL_TIMEOUT):
                await d.connect()
                await d.register(expiry=LOGOUT_EXPIRY)
        except (OSError, TimeoutError, ClientError, ValueError) as exc:
            log.warning("logout: could not reach control: %s", exc)
        finally:
            await d.close()

    def update_endpoints(self, endpoints: list[str], types: list[int]) -> None:
        """Our endpoints or NetInfo changed: tell control (coalesced, in the background)."""
        if endpoints != self.endpoints or types != self.endpoint_types:
            self.endpoints, self.endpoint_types = list(endpoints), list(types)
        self._update_pending.set()

    def update_hostinfo(self) -> None:
        """Hostinfo changed (e.g. advertised routes): send it in a lite update."""
        self._update_pending.set()

    # ---- internals ----

    def _new_direct(self) -> Direct:
        return Direct(
            self.url, machine_key=self.keys.machine, node_key=self.keys.node,
            disco_key=self.keys.disco, hostinfo=self._hostinfo, rand=self._rand,
        )  # fmt: skip

    async def _close_direct(self) -> None:
        d, self._direct = self._direct, None
        if d is not None:
            with contextlib.suppress(Exception):
                await d.close()

    async def _run(self) -> None:
        backoff = BACKOFF_MIN
        while True:
            try:
                await self._session()
                backoff = BACKOFF_MIN
            except asyncio.CancelledError:
                raise
            except (LoginError, ControlURLError) as exc:
                self.last_error = str(exc)
                self._on_state("NeedsLogin", "", f"login: {exc}")
                return
            except (OSError, TimeoutError, ClientError, ValueError, EOFError) as exc:
                self.last_error = str(exc) or type(exc).__name__
                log.info("control: %s; retrying in %.1fs", self.last_error, backoff)
            except Exception as exc:  # h2/zstd/protocol surprises must not end the loop
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("control: unexpected %s; retrying in %.1fs", self.last_error, backoff)
            finally:
                self.connected = False
                await self._close_direct()
            await asyncio.sleep(backoff)
            backoff = min(BACKOFF_MAX, backoff * 2)

    async def _session(self) -> None:
        d = self._direct = self._new_direct()
        async with asyncio.timeout(DIAL_TIMEOUT):
            await d.connect()
        resp = await self._register(d)
        if self._on_login is not None:
            self._on_login(resp.Login)
        self.auth_key = ""  # single-use keys must not be replayed on reconnect
        async with asyncio.timeout(DIAL_TIMEOUT):
            stream = await d.open_map(self.endpoints, self.endpoint_types)
        self.connected = True
        self.last_error = ""
        updater = asyncio.get_running_loop().create_task(self._lite_updates(d))
        try:
            while True:
                msg = await stream.next(MAP_READ_TIMEOUT)
                if self.netmap.apply(msg):
                    self._on_netmap(self.netmap)
        finally:
            updater.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await updater

    async def _register(self, d: Direct) -> RegisterResponse:
        async with asyncio.timeout(DIAL_TIMEOUT):
            resp = await d.register(auth_key=self.auth_key)
        while True:
            if resp.Error:
                raise LoginError(resp.Error)
            if resp.NodeKeyExpired:
                raise LoginError("node key expired; run: meshscale up --reset")
            if resp.AuthURL:
                self._on_state("NeedsLogin", resp.AuthURL, "")
                resp = await d.register(followup=resp.AuthURL)  # waits for the admin
                continue
            if not resp.MachineAuthorized:
                self._on_state("NeedsMachineAuth", "", "")
            self._on_state("Starting", "", "")
            return resp

    async def _lite_updates(self, d: Direct) -> None:
        while True:
            await self._update_pending.wait()
            self._update_pending.clear()
            try:
                await d.send_lite_update(self.endpoints, self.endpoint_types)
            except (OSError, ClientError, ValueError) as exc:
                # The session is broken: closing it ends the map stream, and the run loop
                # reconnects and sends the endpoints with its new map request.
                log.info("control: endpoint update failed: %s", exc)
                self._update_pending.set()
                await d.close()
                return
