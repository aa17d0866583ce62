"""DERP regions kept up over time (tailscale wgengine/magicsock/derp.go): one connection per
region with reconnect and back-off (``RegionClient``), and home-region switching with idle
close of the others (``DERPRegions``). One connection is client.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl as ssl_module
from collections import deque
from collections.abc import Callable, Mapping, Sequence

from ..derp.client import ClientEvent
from ..derp.errors import DERPError
from ..key import NodePrivate, NodePublic
from .client import DERPClient

log = logging.getLogger(__name__)

BACKOFF_MAX = 5.0  # seconds
IDLE_REGION_TIMEOUT = 60.0  # seconds without writes before a non-home region is closed
HELD_WHILE_CONNECTING = 32  # packets kept for a region until its connection is up
NODE_DIAL_TIMEOUT = 1.5  # seconds per region node (TCP + TLS) when the region has others


def backoff_delay(failures: int, rng: random.Random) -> float:
    """min(n^2 x 10 ms, 5 s) times a factor in [0.5, 1.5), as the official client (1.7)."""
    return min(failures * failures * 0.010, BACKOFF_MAX) * (0.5 + rng.random())


class RegionClient:
    """Keeps one DERP connection to a region up, reconnecting with back-off, and reports its
    events. A region's nodes are tried in map order (1.1); each gets NODE_DIAL_TIMEOUT to
    answer when there is another to fall back to."""

    def __init__(
        self,
        private: NodePrivate,
        url: str | Sequence[str],
        on_event: Callable[[ClientEvent], None],
        *,
        ssl: ssl_module.SSLContext | None = None,
        server_name: str | None = None,
        preferred: bool = False,
        rng: random.Random | None = None,
    ) -> None:
        self.private = private
        self.urls = [url] if isinstance(url, str) else list(url)
        if not self.urls:
            raise ValueError("a region needs at least one DERP URL")
        self.on_event = on_event
        self.ssl = ssl
        self.server_name = server_name
        self.preferred = preferred
        self.client: DERPClient | None = None
        self.failures = 0
        self.connects = 0
        self.last_write = 0.0
        self._rng = rng or random.Random()
        self._task: asyncio.Task[None] | None = None
        self._up = asyncio.Event()
        self._held: deque[tuple[NodePublic | bytes, bytes]] = deque(maxlen=HELD_WHILE_CONNECTING)

    @property
    def url(self) -> str:
        """The URL of the connected node (or of the first node)."""
        return self.client.url if self.client is not None else self.urls[0]

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"derp {self.urls[0]}")

    async def wait_connected(self) -> None:
        await self._up.wait()

    def set_preferred(self, preferred: bool) -> None:
        self.preferred = preferred
        if self.client is not None and self.client.connected:
            self.client.note_preferred(preferred)

    def send(self, dst: NodePublic | bytes, packet: bytes) -> bool:
        self.last_write = asyncio.get_running_loop().time()
        c = self.client
        if c is not None and c.connected:
            return c.send(dst, packet)
        # Still connecting: hold a few packets (a WireGuard handshake retries only after 5 s,
        # so dropping the first one costs the first packet 5 s).
        self._held.append((dst, packet))
        return True

    async def _connect_any(self) -> DERPClient:
        dial = NODE_DIAL_TIMEOUT if len(self.urls) > 1 else None
        last: Exception | None = None
        for url in self.urls:
            client = DERPClient(
                self.private, url, ssl=self.ssl, server_name=self.server_name, dial_timeout=dial
            )
            try:
                await client.connect()
                return client
            except (OSError, TimeoutError, DERPError, ValueError) as exc:
                log.debug("derp %s: %r", url, exc)
                last = exc
        assert last is not None
        raise last

    async def _run(self) -> None:
        while True:
            client: DERPClient | None = None
            try:
                client = await self._connect_any()
                self.client = client
                self.failures = 0
                self.connects += 1
                if self.preferred:
                    client.note_preferred(True)
                self._up.set()
                while self._held:
                    client.send(*self._held.popleft())
                while True:
                    for ev in await client.recv_many():
                        self.on_event(ev)
            except asyncio.CancelledError:
                if client is not None:
                    await client.close()
                raise
            except Exception as exc:
                log.debug("derp %s: %r", self.url, exc)
            self._up.clear()
            self.client = None
            if client is not None:
                await client.close()
            self.failures += 1
            await asyncio.sleep(backoff_delay(self.failures, self._rng))

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self.client is not None:
            await self.client.close()
            self.client = None


class DERPRegions:
    """DERP connections by region: the home region is kept forever and told NotePreferred;
    others are opened on demand and closed after ``IDLE_REGION_TIMEOUT`` without writes.

    ``urls`` maps a region ID to its node URLs in map order (or one URL). Assigning a new
    mapping closes the connections of regions whose nodes changed or vanished (2.2); they
    reconnect on next use.
    """

    def __init__(
        self,
        private: NodePrivate,
        urls: Mapping[int, str | Sequence[str]],
        on_event: Callable[[int, ClientEvent], None],
        *,
        ssl: ssl_module.SSLContext | None = None,
    ) -> None:
        self.private = private
        self._urls: dict[int, list[str]] = {}
        self.on_event = on_event
        self.ssl = ssl
        self.home: int | None = None
        self.regions: dict[int, RegionClient] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self.urls = urls  # type: ignore[assignment]

    @property
    def urls(self) -> dict[int, list[str]]:
        return dict(self._urls)

    @urls.setter
    def urls(self, urls: Mapping[int, str | Sequence[str]]) -> None:
        new = {r: [u] if isinstance(u, str) else list(u) for r, u in urls.items()}
        changed = [r for r in self.regions if new.get(r) != self._urls.get(r)]
        self._urls = new
        for r in changed:
            rc = self.regions.pop(r)
            task = asyncio.get_running_loop().create_task(rc.close())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
            if r == self.home and r in new:
                self._region(r).set_preferred(True)

    def _region(self, region: int) -> RegionClient:
        rc = self.regions.get(region)
        if rc is None:
            url = self._urls[region]
            rc = RegionClient(self.private, url, lambda ev: self.on_event(region, ev), ssl=self.ssl)
            self.regions[region] = rc
            rc.start()
        return rc

    def set_home(self, region: int) -> RegionClient:
        """Switch home: NotePreferred(1) to the new home, NotePreferred(0) to the old."""
        if self.home is not None and self.home != region and self.home in self.regions:
            self.regions[self.home].set_preferred(False)
        self.home = region
        rc = self._region(region)
        rc.set_preferred(True)
        return rc

    def send(self, region: int, dst: NodePublic | bytes, packet: bytes) -> bool:
        return self._region(region).send(dst, packet)

    async def close_idle(self, now: float) -> list[int]:
        """Close non-home regions idle for IDLE_REGION_TIMEOUT; call every ~15 s."""
        idle = [
            r
            for r, rc in self.regions.items()
            if r != self.home and now - rc.last_write > IDLE_REGION_TIMEOUT
        ]
        for r in idle:
            await self.regions.pop(r).close()
        return idle

    async def close(self) -> None:
        for rc in list(self.regions.values()):
            await rc.close()
        self.regions.clear()
        if self._closing:
            await asyncio.wait(list(self._closing), timeout=2.0)
