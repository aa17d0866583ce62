"""The port-mapping driver: runs ``meshscale.portmap.PortMapper`` for the WireGuard UDP port.

It finds the default route's gateway (``/proc/net/route``) and the source address toward it,
talks NAT-PMP/PCP and SSDP from its own UDP socket and UPnP's HTTP over short TCP connections,
and hands the mapped address to magicsock (``MagicBind.set_portmapped``), which advertises it
as an EndpointPortmapped candidate. ``stop(release=True)`` deletes the mapping (on ``down``);
``restart`` re-maps after a link change. ``TS_DISABLE_PORTMAPPER=1`` turns it off.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import socket
from collections.abc import Callable
from urllib.parse import urlsplit

from meshscale.disco import AddrPort
from meshscale.portmap import upnp
from meshscale.portmap.client import HTTPRequest, PortMapper, Protocol

log = logging.getLogger("meshscale.portmapper")

HTTP_TIMEOUT = 3.0  # seconds for one UPnP HTTP exchange
MAX_HTTP = upnp.MAX_BODY + 8192  # bytes read from one HTTP answer
MAX_WAIT = 30.0  # seconds between checks that the gateway and our port are unchanged


def default_gateway(route_file: str = "/proc/net/route") -> ipaddress.IPv4Address | None:
    """The IPv4 default route's gateway, from the kernel's route table (None if none)."""
    try:
        with open(route_file) as f:
            lines = f.read(65536).splitlines()[1:]
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) < 4 or fields[1] != "00000000" or not int(fields[3], 16) & 0x2:
            continue
        try:
            return ipaddress.IPv4Address(int(fields[2], 16).to_bytes(4, "little"))
        except ValueError:
            continue
    return None


def source_address(gateway: ipaddress.IPv4Address) -> ipaddress.IPv4Address | None:
    """Our address on the way to ``gateway`` (what the gateway will map)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect((str(gateway), 5351))
            return ipaddress.IPv4Address(s.getsockname()[0])
        except OSError:
            return None


class _Proto(asyncio.DatagramProtocol):
    def __init__(self, on_datagram: Callable[[bytes, tuple[str, int]], None]) -> None:
        self.on_datagram = on_datagram

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        self.on_datagram(data, (str(addr[0]), int(addr[1])))

    def error_received(self, exc: Exception) -> None:
        log.debug("portmap socket: %s", exc)


class PortMapperService:
    """Keeps the WireGuard port mapped on the gateway while running."""

    def __init__(
        self,
        local_port: Callable[[], int],
        on_mapping: Callable[[AddrPort | None], None],
        *,
        gateway: Callable[[], ipaddress.IPv4Address | None] = default_gateway,
    ) -> None:
        self._local_port = local_port
        self._on_mapping = on_mapping
        self._gateway = gateway
        self.core: PortMapper | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()  # the core's timer may have moved
        self._restart = False
        self._transport: asyncio.DatagramTransport | None = None
        self._http: set[asyncio.Task[None]] = set()
        self._published: AddrPort | None = None

    @property
    def enabled(self) -> bool:
        return os.environ.get("TS_DISABLE_PORTMAPPER", "") not in ("1", "true")

    @property
    def mapped(self) -> AddrPort | None:
        """The external address the gateway maps to our port, as last handed to magicsock."""
        return self._published

    def have(self) -> dict[str, bool] | None:
        """{"UPnP", "PMP", "PCP"} as netcheck reports them; None before a probe finished."""
        if self.core is None or self.core.have is None:
            return None
        h = self.core.have
        return {"UPnP": h[Protocol.UPNP], "PMP": h[Protocol.PMP], "PCP": h[Protocol.PCP]}

    def start(self) -> None:
        if self._task is None and self.enabled:
            self._task = asyncio.get_running_loop().create_task(self._run())

    def restart(self) -> None:
        """The link changed: probe and map again."""
        if self._task is not None:
            self._restart = True
            self._wake.set()

    async def stop(self, *, release: bool) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if release and self.core is not None:
            self.core.release()
            self._flush()
            for t in list(self._http):
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(t, HTTP_TIMEOUT)
        self._close()
        self._publish(None)

    def _close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        for t in self._http:
            t.cancel()
        self._http.clear()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        key: tuple[object, ...] | None = None
        while True:
            gw, port = self._gateway(), self._local_port()
            me = source_address(gw) if gw is not None else None
            if (gw, me, port) != key or self._restart:
                self._restart = False
                key = (gw, me, port)
                if self.core is not None and self.core.mapping is not None:
                    self.core.release()
                    self._flush()
                self._close()
                self.core = None
                self._publish(None)
                if gw is not None and me is not None and port:
                    self.core = PortMapper(gw, me, port, os.urandom(12))
                    self._transport, _ = await loop.create_datagram_endpoint(
                        lambda: _Proto(self._on_datagram), local_addr=(str(me), 0)
                    )
                    self.core.start(loop.time())
                    self._flush()
            wait = MAX_WAIT
            if self.core is not None and (t := self.core.get_timer()) is not None:
                wait = min(MAX_WAIT, max(0.0, t - loop.time()))
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                # asyncio.timeout, not wait_for: 3.11's wait_for can swallow our cancel.
                async with asyncio.timeout(wait):
                    await self._wake.wait()
            if self.core is not None:
                t = self.core.get_timer()
                if t is not None and loop.time() >= t:
                    self.core.handle_timer(loop.time())
                    self._flush()

    def _on_datagram(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.core is None:
            return
        try:
            src = (ipaddress.IPv4Address(addr[0]), addr[1])
        except ValueError:
            return
        self.core.receive_datagram(data, src, asyncio.get_running_loop().time())
        self._flush()

    def _flush(self) -> None:
        core = self.core
        if core is None:
            return
        for data, (ip, port) in core.datagrams_to_send():
            if self._transport is not None:
                try:
                    self._transport.sendto(data, (str(ip), port))
                except OSError as exc:
                    log.debug("portmap send to %s: %s", ip, exc)
        for req in core.http_to_send():
            task = asyncio.get_running_loop().create_task(self._exchange(core, req))
            self._http.add(task)
            task.add_done_callback(self._http.discard)
        m = core.mapping
        self._publish(AddrPort(m.external[0], m.external[1]) if m is not None else None)
        self._wake.set()

    def _publish(self, addr: AddrPort | None) -> None:
        if addr != self._published:
            self._published = addr
            log.info("port mapping: %s", addr if addr is not None else "none")
            self._on_mapping(addr)

    async def _exchange(self, core: PortMapper, req: HTTPRequest) -> None:
        parts = urlsplit(req.url)
        answer: bytes | None = None
        try:
            async with asyncio.timeout(HTTP_TIMEOUT):
                reader, writer = await asyncio.open_connection(parts.hostname, parts.port or 80)
                try:
                    writer.write(req.data)
                    await writer.drain()
                    answer = await reader.read(MAX_HTTP)
                    while len(answer) < MAX_HTTP and (more := await reader.read(MAX_HTTP)):
                        answer += more
                finally:
                    writer.close()
        except (OSError, TimeoutError) as exc:
            log.debug("UPnP %s %s: %s", req.tag, req.url, exc)
            answer = None
        if core is self.core:
            core.receive_http(req.tag, answer, asyncio.get_running_loop().time())
            self._flush()
