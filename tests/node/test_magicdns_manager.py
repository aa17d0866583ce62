"""MagicDNS glue on real files: accept-dns on/off, re-apply after a foreign rewrite, down,
close; `dns query` with a short name; quad-100 packets through intercept -> inject."""

from __future__ import annotations

import asyncio
import struct
from pathlib import Path

import dns.message
import pytest

from meshscale.dns import quad100
from meshscale.node.magicdns import manager
from meshscale.node.magicdns.manager import MagicDNS
from meshscale.packet import IPPROTO_UDP, UDPHeader, parse_ip
from meshscale.packet.checksum import checksum
from meshscale.tailcfg.dns import DNSConfig, DNSRecord
from meshscale.tailcfg.node import Node

ORIGINAL = "nameserver 192.0.2.53\nsearch home.arpa\n"
ME = Node(Name="n1.lab.example.", Addresses=["100.64.0.1/32", "fd7a:115c:a1e0::1/128"])
WEB = Node(Name="web.lab.example.", Addresses=["100.64.0.2/32"])
EXTRA = DNSRecord(Name="x.lab.example", Type="A", Value="100.64.0.9")
CFG = DNSConfig(Proxied=True, Domains=["lab.example"], ExtraRecords=[EXTRA])


def udp_query(name: str) -> bytes:
    payload = dns.message.make_query(name, "A").to_wire()
    seg = struct.pack("!HHHH", 40000, 53, 8 + len(payload), 0) + payload
    hdr = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(seg), 0, 0, 64, IPPROTO_UDP,
                                0, bytes((100, 64, 0, 1)), quad100.QUAD100_V4_RAW))  # fmt: skip
    hdr[10:12] = checksum(hdr).to_bytes(2, "big")
    return bytes(hdr) + seg


def test_accept_dns_trample_down_and_close(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    resolv = tmp_path / "resolv.conf"
    resolv.write_text(ORIGINAL)
    monkeypatch.setattr(manager, "WATCH_INTERVAL", 0.05)

    async def main() -> None:
        written: list[bytes] = []
        m = MagicDNS(tmp_path / "state", "ms0", asyncio.get_running_loop(),
                     inject=written.extend, resolv_conf=resolv)  # fmt: skip
        m.start()
        m.set_netmap(CFG, ME, [WEB], accept_dns=False)
        assert resolv.read_text() == ORIGINAL  # the system is left alone
        m.set_netmap(CFG, ME, [WEB], accept_dns=True)
        text = resolv.read_text()
        assert "nameserver 100.100.100.100" in text and "search lab.example home.arpa" in text
        assert m.resolver.config.fallback == ["192.0.2.53"]  # the OS's own, from the backup
        resolv.write_text("nameserver 198.51.100.1\n")  # a DHCP client tramples it
        for _ in range(40):
            await asyncio.sleep(0.05)
            if "100.100.100.100" in resolv.read_text():
                break
        assert "100.100.100.100" in resolv.read_text()
        res = await m.query("web", "A")  # short name: tried under the search domains
        assert res["Answers"][0]["Value"] == "100.64.0.2" and res["Rcode"] == "NOERROR"
        rest = m.quad100.intercept([udp_query("x.lab.example"), b"\x45" + b"\x00" * 30])
        assert len(rest) == 1  # only quad-100's packet was taken
        for _ in range(40):
            await asyncio.sleep(0.01)
            if written:
                break
        h = parse_ip(written[0])
        udp = UDPHeader.parse(written[0][h.header_length :])
        assert udp.dst_port == 40000
        ans = dns.message.from_wire(written[0][h.header_length + 8 :])
        assert ans.answer[0][0].to_text() == "100.64.0.9"
        m.clear()  # down
        assert resolv.read_text() == "nameserver 198.51.100.1\n"  # not ours: kept
        m.set_netmap(CFG, ME, [WEB], accept_dns=True)
        await m.close()  # clean exit
        assert resolv.read_text() == "nameserver 198.51.100.1\n"
        assert m.status()["OSConfig"]["Active"] is False

    asyncio.run(main())
