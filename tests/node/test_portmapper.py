"""meshscale.node.portmapper: the driver over real sockets, against a NAT-PMP responder on loopback.

The responder speaks RFC 6886 from bytes laid out here; nothing of the client is reused by it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import struct
from pathlib import Path
from typing import cast

import pytest

from meshscale.disco import AddrPort
from meshscale.node.portmapper import PortMapperService, default_gateway

GW = ipaddress.IPv4Address("127.0.0.53")
EXT = ipaddress.IPv4Address("203.0.113.9")

ROUTE = """Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth0\t0064A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
eth0\t00000000\t0164A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0
"""


def test_default_gateway_from_proc_route(tmp_path: Path) -> None:
    f = tmp_path / "route"
    f.write_text(ROUTE)
    assert default_gateway(str(f)) == ipaddress.IPv4Address("192.168.100.1")
    f.write_text(ROUTE.splitlines()[0] + "\n" + ROUTE.splitlines()[1] + "\n")
    assert default_gateway(str(f)) is None
    assert default_gateway(str(tmp_path / "missing")) is None


class PMPResponder(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.maps: list[tuple[int, int]] = []  # (internal port, lifetime) asked for

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        assert self.transport is not None
        if data[0] != 0:
            return  # a PCP probe: this gateway is NAT-PMP only and stays silent
        if data[1] == 0:
            self.transport.sendto(bytes.fromhex("0080 0000 00000001") + EXT.packed, addr)
        elif data[1] == 1:
            internal, _, life = struct.unpack_from("!HHI", data, 4)
            self.maps.append((internal, life))
            ans = bytes.fromhex("0081 0000 00000001") + struct.pack("!HHI", internal, 60000, life)
            self.transport.sendto(ans, addr)


async def _maps_publishes_and_releases() -> None:
    loop = asyncio.get_running_loop()
    try:
        transport, gw = await loop.create_datagram_endpoint(
            PMPResponder, local_addr=(str(GW), 5351), family=socket.AF_INET
        )
    except OSError as exc:
        pytest.skip(f"cannot listen on {GW}:5351: {exc}")
    published: list[AddrPort | None] = []
    changed = asyncio.Event()

    def on_mapping(addr: AddrPort | None) -> None:
        published.append(addr)
        changed.set()

    svc = PortMapperService(lambda: 41641, on_mapping, gateway=lambda: GW)
    try:
        svc.start()
        async with asyncio.timeout(10):
            await changed.wait()
        assert svc.mapped == AddrPort(EXT, 60000)
        assert svc.have() == {"UPnP": False, "PMP": True, "PCP": False}
        await svc.stop(release=True)
        await asyncio.sleep(0.1)
        assert gw.maps[0] == (41641, 7200) and gw.maps[-1] == (41641, 0)
        assert published == [AddrPort(EXT, 60000), None]
    finally:
        await svc.stop(release=False)
        transport.close()


def test_maps_publishes_and_releases() -> None:
    asyncio.run(_maps_publishes_and_releases())
