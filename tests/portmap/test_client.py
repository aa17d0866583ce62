"""meshscale.portmap.client: protocol choice, fallback, renewal and release against a fake gateway.

The fake gateway answers with messages laid out as RFC 6886/6887 and the UPnP IGD specs describe,
built here byte by byte, so the client's encoders are not what checks its decoders.
"""

from __future__ import annotations

import ipaddress
import struct

from meshscale.portmap import client, natpmp, pcp, upnp
from meshscale.portmap.client import Mapping, PortMapper, Protocol

GW = ipaddress.IPv4Address("192.168.1.1")
ME = ipaddress.IPv4Address("192.168.1.10")
EXT = ipaddress.IPv4Address("203.0.113.7")
NONCE = b"n" * 12
PORT = 41641
LOCATION = "http://192.168.1.1:5000/rootDesc.xml"
DESC = b"""<?xml version="1.0"?><root xmlns="urn:schemas-upnp-org:device-1-0"><device><serviceList>
<service><serviceType>urn:schemas-upnp-org:service:WANIPConnection:1</serviceType>
<controlURL>/ctl/IPConn</controlURL></service></serviceList></device></root>"""


class FakeGateway:
    """Answers the protocols in ``speaks``; records what it was asked."""

    def __init__(self, *speaks: Protocol, grant: int = 3600) -> None:
        self.speaks = set(speaks)
        self.grant = grant
        self.released: list[Protocol] = []
        self.maps = 0
        self.drop_maps: set[Protocol] = set()  # map requests of these go unanswered

    def udp(
        self, data: bytes, dst: tuple[ipaddress.IPv4Address, int]
    ) -> list[tuple[bytes, tuple[ipaddress.IPv4Address, int]]]:
        if dst[1] == upnp.SSDP_PORT:
            if Protocol.UPNP not in self.speaks or dst[0] != GW:
                return []
            ans = (
                b"HTTP/1.1 200 OK\r\nST: "
                + upnp.IGD_DEVICE.encode()
                + b"\r\nLOCATION: "
                + LOCATION.encode()
                + b"\r\n\r\n"
            )
            return [(ans, (GW, 1900))]
        src = (GW, 5351)
        if data[0] == 2:
            if Protocol.PCP not in self.speaks:
                # RFC 6887 §9: a NAT-PMP server answers version 2 with Unsupported Version.
                return (
                    [(bytes.fromhex("0080 0001 00000001"), src)]
                    if Protocol.PMP in self.speaks
                    else []
                )
            life = struct.unpack_from("!I", data, 4)[0]
            head = (
                bytes((2, data[1] | 0x80, 0, 0))
                + struct.pack("!II", min(life, self.grant), 9)
                + bytes(12)
            )
            if data[1] == 0:
                return [(head, src)]
            if Protocol.PCP in self.drop_maps:
                return []
            if life == 0:
                self.released.append(Protocol.PCP)
            self.maps += 1
            body = data[24:36] + data[36:40] + data[40:42] + struct.pack("!H", 50000)
            return [(head + body + b"\0" * 10 + b"\xff\xff" + EXT.packed, src)]
        if Protocol.PMP not in self.speaks:
            return []
        if data[1] == 0:
            return [(bytes.fromhex("0080 0000 00000009") + EXT.packed, src)]
        internal, _, life = struct.unpack_from("!HHI", data, 4)
        if life == 0:
            self.released.append(Protocol.PMP)
        self.maps += 1
        return [
            (
                bytes.fromhex("0081 0000 00000009")
                + struct.pack("!HHI", internal, 50001, min(life, self.grant)),
                src,
            )
        ]

    def http(self, req: client.HTTPRequest) -> bytes:
        if req.tag == "description":
            body = DESC
        else:
            action = {
                "add": "AddPortMapping",
                "extip": "GetExternalIPAddress",
                "delete": "DeletePortMapping",
            }[req.tag]
            assert f"#{action}".encode() in req.data
            if req.tag == "delete":
                self.released.append(Protocol.UPNP)
            if req.tag == "add":
                self.maps += 1
            inner = (
                f"<NewExternalIPAddress>{EXT}</NewExternalIPAddress>" if req.tag == "extip" else ""
            )
            body = (
                '<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body>'
                f'<u:{action}Response xmlns:u="x">{inner}</u:{action}Response>'
                "</s:Body></s:Envelope>"
            ).encode()
        return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body


def pump(pm: PortMapper, gw: FakeGateway, now: float) -> None:
    """Deliver everything both ways until quiet (bounded)."""
    for _ in range(50):
        out = pm.datagrams_to_send()
        reqs = pm.http_to_send()
        if not out and not reqs:
            return
        for data, dst in out:
            for ans, src in gw.udp(data, dst):
                pm.receive_datagram(ans, src, now)
        for req in reqs:
            pm.receive_http(req.tag, gw.http(req), now)
    raise AssertionError("client and gateway never went quiet")


def run(gw: FakeGateway, until: float = 5.0) -> PortMapper:
    pm = PortMapper(GW, ME, PORT, NONCE)
    pm.start(0.0)
    now = 0.0
    pump(pm, gw, now)
    for _ in range(20):
        t = pm.get_timer()
        if t is None or t > until:
            break
        now = t
        pm.handle_timer(now)
        pump(pm, gw, now)
    return pm


def test_prefers_pcp_when_everything_answers() -> None:
    pm = run(FakeGateway(Protocol.PCP, Protocol.PMP, Protocol.UPNP))
    assert pm.mapping is not None and pm.mapping.protocol is Protocol.PCP
    assert pm.mapping.external == (EXT, 50000)
    assert pm.have == dict.fromkeys(Protocol, True)  # later answers count after PCP won


def test_falls_back_to_natpmp() -> None:
    pm = run(FakeGateway(Protocol.PMP, Protocol.UPNP))
    assert pm.have == {Protocol.PCP: False, Protocol.PMP: True, Protocol.UPNP: True}
    assert pm.mapping == Mapping(Protocol.PMP, (EXT, 50001), PORT, 1.5 + 3600)


def test_upnp_only() -> None:
    pm = run(FakeGateway(Protocol.UPNP))
    assert pm.mapping is not None and pm.mapping.protocol is Protocol.UPNP
    assert pm.mapping.external == (EXT, PORT)


def test_nothing_answers_then_retries_later() -> None:
    pm = run(FakeGateway())
    assert pm.mapping is None and pm.have == dict.fromkeys(Protocol, False)
    assert pm.get_timer() == client.PROBE_TIMEOUT + client.RETRY_AFTER


def test_silent_pcp_map_falls_back_to_pmp() -> None:
    gw = FakeGateway(Protocol.PCP, Protocol.PMP)
    gw.drop_maps.add(Protocol.PCP)  # PCP answers the ANNOUNCE but never a MAP
    pm = run(gw)
    assert pm.mapping is not None and pm.mapping.protocol is Protocol.PMP
    assert pm.errors["timeout"] == 1


def test_renews_at_half_lifetime() -> None:
    gw = FakeGateway(Protocol.PMP, grant=100)
    pm = run(gw, until=1.5 + 50)
    assert pm.mapping is not None and pm.mapping.expires == 1.5 + 50 + 100
    assert gw.maps == 2


def test_release_on_down() -> None:
    for proto in Protocol:
        gw = FakeGateway(proto)
        pm = run(gw)
        assert pm.mapping is not None
        pm.release()
        pump(pm, gw, 10.0)
        assert gw.released == [proto] and pm.mapping is None and pm.get_timer() is None


def test_garbage_and_foreign_answers_are_counted_not_fatal() -> None:
    pm = PortMapper(GW, ME, PORT, NONCE)
    pm.start(0.0)
    pm.receive_datagram(b"\x02\x81", (GW, 5351), 0.1)
    pm.receive_datagram(
        bytes.fromhex("0080 0000 00000009") + EXT.packed,
        (ipaddress.IPv4Address("10.9.9.9"), 5351),
        0.1,
    )
    pm.receive_datagram(b"HTTP/1.1 200 OK\r\nLOCATION: ftp://x/\r\n\r\n", (GW, 1900), 0.1)
    pm.receive_http("description", None, 0.2)
    assert pm.errors == {"parse_error": 2, "foreign_datagram": 1, "http_error": 1}


def test_pcp_answer_with_another_nonce_is_ignored() -> None:
    gw = FakeGateway(Protocol.PCP)
    gw.drop_maps.add(Protocol.PCP)
    pm = PortMapper(GW, ME, PORT, NONCE)
    pm.start(0.0)
    pump(pm, gw, 0.0)  # the client now waits for its MAP answer
    gw.drop_maps.clear()
    forged = pcp.map_request(ME, PORT, b"x" * 12)  # an answer to someone else's MAP
    for ans, src in gw.udp(forged, (GW, 5351)):
        pm.receive_datagram(ans, src, 0.1)
    assert pm.errors == {"pcp_mismatch": 1} and pm.mapping is None


def test_natpmp_module_constants_shared() -> None:
    assert natpmp.PORT == pcp.PORT == 5351
