"""TSMP (docs/protocol/derp-disco-stun.md §7.4): ping/pong, rejections, disco-key advertisements,
built and read back."""

from __future__ import annotations

import ipaddress

import pytest

from meshscale.packet.tsmp import (
    REJECT_ACL,
    REJECT_SHIELDS_UP,
    TSMPMessage,
    tsmp_disco_advertisement,
    tsmp_message,
    tsmp_ping,
    tsmp_pong,
    tsmp_rejected,
)

from .builders import ACK, TCP, TSMP, UDP
from .builders import ip_packet as packet

ME4, ME6 = "100.64.0.1", "fd7a:115c:a1e0::1"
PEER4, PEER6 = "100.64.0.2", "fd7a:115c:a1e0::2"


def _checksum_ok(hdr: bytes) -> bool:
    total = sum(int.from_bytes(hdr[i : i + 2], "big") for i in range(0, 20, 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total == 0xFFFF


def test_tsmp_ping_pong_v4() -> None:
    ping = tsmp_ping(PEER4, ME4, b"12345678", ident=0x1234)
    assert len(ping) == 20 + 9
    assert ping[9] == TSMP and ping[8] == 64 and _checksum_ok(ping[:20])
    assert tsmp_message(ping) == TSMPMessage(ord("p"), b"12345678")
    pong = tsmp_pong(ping, peerapi_port=0xBEEF)
    assert pong is not None
    assert pong[12:16] == ipaddress.ip_address(ME4).packed  # swapped
    assert pong[16:20] == ipaddress.ip_address(PEER4).packed
    assert pong[4:6] == (0x1234 ^ 0xFFFF).to_bytes(2, "big")  # inverted ID
    assert pong[20:] == b"o12345678\xbe\xef"
    assert _checksum_ok(pong[:20])
    msg = tsmp_message(pong)
    assert msg is not None
    assert (msg.type, msg.ping_data, msg.peerapi_port) == (ord("o"), b"12345678", 0xBEEF)


def test_tsmp_ping_pong_v6() -> None:
    ping = tsmp_ping(PEER6, ME6, b"abcdefgh", ident=0x12345)
    pong = tsmp_pong(ping)
    assert pong is not None
    assert pong[0] >> 4 == 6
    assert int.from_bytes(pong[0:4], "big") & 0xFFFFF == (~0x12345) & 0xFFFFF
    assert pong[6:8] == bytes((TSMP, 64))
    assert pong[8:24] == ipaddress.ip_address(ME6).packed
    assert int.from_bytes(pong[4:6], "big") == 11
    assert pong[40:] == b"oabcdefgh\x00\x00"


def test_tsmp_short_and_other_messages() -> None:
    short_pong = tsmp_ping(PEER4, ME4, b"12345678")
    short_pong = short_pong[:20] + b"o" + short_pong[21:]
    msg = tsmp_message(short_pong)
    assert msg is not None
    assert msg.peerapi_port == 0  # 9-byte pong: no PeerAPI port
    assert tsmp_pong(short_pong) is None  # not a ping
    assert tsmp_pong(packet(PEER4, ME4, UDP)) is None
    assert tsmp_message(packet(PEER4, ME4, TCP)) is None
    with pytest.raises(ValueError, match="8 bytes"):
        tsmp_ping(PEER4, ME4, b"short")


def test_tsmp_rejected_for_dropped_syn() -> None:
    syn = packet(PEER4, ME4, TCP, sport=40000, dport=22)
    rej = tsmp_rejected(syn, REJECT_SHIELDS_UP)
    assert rej is not None
    assert rej[12:16] == ipaddress.ip_address(ME4).packed  # from the rejecting node
    assert rej[16:20] == ipaddress.ip_address(PEER4).packed
    assert rej[20:] == b"!\x06S" + (40000).to_bytes(2, "big") + (22).to_bytes(2, "big")
    assert _checksum_ok(rej[:20])
    assert tsmp_rejected(packet(PEER4, ME4, TCP, flags=ACK)) is None
    assert tsmp_rejected(packet(PEER6, ME6, TCP)) is None  # IPv4 only, as upstream
    assert tsmp_rejected(syn)[22] == REJECT_ACL  # type: ignore[index]


def test_tsmp_disco_advertisement() -> None:
    key = bytes(range(32))
    pkt = tsmp_disco_advertisement(PEER6, ME6, key)
    assert pkt[6] == TSMP
    # docs/protocol/derp-disco-stun.md §7.4: 33-byte payload
    assert int.from_bytes(pkt[4:6], "big") == 33
    msg = tsmp_message(pkt)
    assert msg is not None
    assert msg.disco_key == key
    assert tsmp_message(tsmp_ping(PEER4, ME4, bytes(8))).disco_key is None  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="32"):
        tsmp_disco_advertisement(PEER4, ME4, bytes(31))
