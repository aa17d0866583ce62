"""Quad-100 packets: UDP in/out and the minimal TCP responder (sans-IO), hostile segments."""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from meshscale.dns import quad100
from meshscale.dns.quad100 import ACK, FIN, PSH, RST, SYN, TCPServer
from meshscale.packet import IPPROTO_TCP, IPPROTO_UDP, TCPHeader, UDPHeader, parse_ip
from meshscale.packet.checksum import checksum, pseudo_header_sum, verify

CLIENT4 = bytes((100, 64, 0, 1))
CLIENT6 = bytes.fromhex("fd7a115ca1e000000000000000000001")


def ip(src: bytes, dst: bytes, proto: int, l4: bytes) -> bytes:
    if len(src) == 4:
        h = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 1, 0, 64, proto, 0,
                                  src, dst))  # fmt: skip
        h[10:12] = checksum(h).to_bytes(2, "big")
        return bytes(h) + l4
    return struct.pack("!IHBB16s16s", 6 << 28, len(l4), proto, 64, src, dst) + l4


def tcp(seq: int, ack: int, flags: int, data: bytes = b"", *, v6: bool = False,
        port: int = 40000) -> bytes:  # fmt: skip
    src, dst = (CLIENT6, quad100.QUAD100_V6_RAW) if v6 else (CLIENT4, quad100.QUAD100_V4_RAW)
    seg = bytearray(struct.pack("!HHIIBBHHH", port, 53, seq, ack, 5 << 4, flags, 65535, 0, 0))
    seg += data
    seg[16:18] = checksum(seg, pseudo_header_sum(src, dst, IPPROTO_TCP, len(seg))).to_bytes(
        2, "big"
    )
    return ip(src, dst, IPPROTO_TCP, bytes(seg))


def check(p: bytes) -> tuple[TCPHeader, bytes]:
    h = parse_ip(p)
    seg = p[h.header_length : h.total_length]
    assert verify(seg, pseudo_header_sum(h.src, h.dst, IPPROTO_TCP, len(seg)))
    assert h.src in (quad100.QUAD100_V4_RAW, quad100.QUAD100_V6_RAW)
    t = TCPHeader.parse(seg)
    return t, seg[t.header_length :]


def rand(n: int) -> bytes:
    return b"\x10" * n


def test_udp_roundtrip_v4_and_v6() -> None:
    for src, dst in ((CLIENT4, quad100.QUAD100_V4_RAW), (CLIENT6, quad100.QUAD100_V6_RAW)):
        payload = b"\x12\x34" + b"q" * 20
        seg = struct.pack("!HHHH", 5353, 53, 8 + len(payload), 0) + payload
        pkt = ip(src, dst, IPPROTO_UDP, seg)
        assert quad100.match(pkt) and quad100.match(memoryview(pkt + b"\x00" * 16))
        q = quad100.parse_udp(pkt)
        assert q is not None and q.port == 5353 and q.payload == payload
        out = quad100.udp_reply(q, b"answer")
        h = parse_ip(out)
        assert (h.src, h.dst) == (dst, src)
        body = out[h.header_length :]
        assert verify(body, pseudo_header_sum(h.src, h.dst, IPPROTO_UDP, len(body)))
        u = UDPHeader.parse(body)
        assert (u.src_port, u.dst_port, body[8:]) == (53, 5353, b"answer")
    other = ip(CLIENT4, bytes((100, 64, 0, 2)), IPPROTO_UDP, b"\x00" * 8)
    assert not quad100.match(other)


def test_tcp_query_answer_and_close() -> None:
    s = TCPServer(rand)
    out, qs = s.receive(tcp(1000, 0, SYN), 0.0)
    synack, _ = check(out[0])
    assert synack.flags == SYN | ACK and synack.ack == 1001 and not qs
    iss = synack.seq
    out, qs = s.receive(tcp(1001, iss + 1, ACK), 0.0)
    assert out == [] and qs == []
    msg1, msg2 = b"A" * 30, b"B" * 40
    stream = struct.pack("!H", 30) + msg1 + struct.pack("!H", 40) + msg2  # pipelined
    out, qs = s.receive(tcp(1001, iss + 1, ACK | PSH, stream[:20]), 0.1)  # first part only
    assert qs == [] and check(out[0])[0].ack == 1021
    out, qs = s.receive(tcp(1021, iss + 1, ACK | PSH | FIN, stream[20:]), 0.2)
    assert [q for _, q in qs] == [msg1, msg2]
    assert check(out[0])[0].ack == 1001 + len(stream) + 1  # data and FIN acknowledged
    assert len(out) == 1  # no FIN from us while queries are pending
    big = b"R" * 2500  # answer larger than one segment
    segs = s.send(qs[0][0], big)
    datas = [check(p) for p in segs]
    assert b"".join(d for _, d in datas) == struct.pack("!H", 2500) + big
    assert all(t.flags & ACK for t, _ in datas) and not any(t.flags & FIN for t, _ in datas)
    last = s.send(qs[1][0], b"r2")
    assert check(last[-1])[0].flags & FIN
    final_seq = check(last[-1])[0].seq + 1
    s.receive(tcp(1001 + len(stream) + 1, final_seq, ACK), 0.3)
    assert not s.flows


def test_tcp_oversize_rst_stray_and_idle() -> None:
    s = TCPServer(rand)
    iss = check(s.receive(tcp(1, 0, SYN, v6=True), 0.0)[0][0])[0].seq
    out, qs = s.receive(tcp(2, iss + 1, ACK, struct.pack("!H", 4097) + b"x", v6=True), 0.0)
    assert check(out[0])[0].flags & RST and not qs and not s.flows
    stray, _ = s.receive(tcp(5, 77, ACK, b"zz"), 0.0)
    assert check(stray[0])[0].flags & RST
    s.receive(tcp(1, 0, SYN, port=1), 0.0)
    assert s.handle_timer(10.0) == [] and s.flows
    assert check(s.handle_timer(100.0)[0])[0].flags & RST and not s.flows
    full = TCPServer(rand, max_flows=1)
    full.receive(tcp(1, 0, SYN, port=1), 0.0)
    assert check(full.receive(tcp(1, 0, SYN, port=2), 0.0)[0][0])[0].flags & RST
    out, _ = full.receive(tcp(9, 0, ACK, b"x", port=1), 0.0)  # out of order: re-ACK
    assert check(out[0])[0].ack == 2


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=120), st.integers(0, 255))
def test_random_segments_never_crash(junk: bytes, flags: int) -> None:
    s = TCPServer(rand)
    s.receive(tcp(1, 0, SYN), 0.0)
    for p in (junk, tcp(2, 0, flags, junk), ip(CLIENT4, quad100.QUAD100_V4_RAW, 6, junk)):
        out, _ = s.receive(p, 0.0)
        for o in out:
            check(o)
        quad100.parse_udp(p)
