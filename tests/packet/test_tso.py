from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshscale.packet import (
    F_NEEDS_CSUM,
    GSO_ECN,
    GSO_NONE,
    GSO_TCPV4,
    GSO_UDP_L4,
    MAX_SEGMENTS,
    IPv4Header,
    Splitter,
    TCPHeader,
    VirtioNetHdr,
    gso_split,
    parse_ip,
    split_room,
    tso,
)

from .builders import l4_ok, partial, super_tcp, super_udp, tcp, udp

TS_OPTION = b"\x01\x01\x08\x0a" + bytes(range(8))


def payload_of(pkt: bytes) -> bytes:
    ip = parse_ip(pkt)
    l4 = pkt[ip.header_length :]
    if ip.protocol == 6:
        return l4[TCPHeader.parse(l4).header_length :]
    return l4[8:]


@given(
    st.binary(min_size=1, max_size=9000),
    st.integers(1, 1500),
    st.booleans(),
    st.booleans(),
    st.integers(0, 2**32 - 1),
    st.sampled_from([0x10, 0x18, 0x19, 0x11]),
)
def test_tcp_split(payload: bytes, gso: int, v6: bool, opts: bool, seq: int, flags: int) -> None:
    frame = super_tcp(payload, gso, v6=v6, seq=seq, flags=flags, options=TS_OPTION if opts else b"")
    segs, stats = gso_split(frame)
    n = -(-len(payload) // gso)
    if n > MAX_SEGMENTS:
        assert segs == [] and stats.dropped == {"too_many_segments": 1}
        return
    assert len(segs) == n
    assert b"".join(payload_of(s) for s in segs) == payload
    for i, s in enumerate(segs):
        assert l4_ok(s), i
        ip = parse_ip(s)
        assert ip.total_length == len(s)
        th = TCPHeader.parse(s[ip.header_length :])
        assert th.seq == (seq + i * gso) % 2**32
        assert th.ack == 1000
        want_flags = flags if i == n - 1 else flags & ~0x09  # FIN and PSH only at the end
        assert th.flags == want_flags
        if isinstance(ip, IPv4Header):
            assert ip.identification == (7 + i) & 0xFFFF
            assert ip.flags_fragment == 0x4000
        if i < n - 1:
            assert len(payload_of(s)) == gso
    assert stats.super_packets == 1 and stats.segments == n


@given(st.binary(min_size=1, max_size=6000), st.integers(1, 1400), st.booleans())
def test_udp_split(payload: bytes, gso: int, v6: bool) -> None:
    segs, _ = gso_split(super_udp(payload, gso, v6=v6))
    n = -(-len(payload) // gso)
    if n > MAX_SEGMENTS:
        assert segs == []
        return
    assert len(segs) == n
    assert b"".join(s[(48 if v6 else 28) :] for s in segs) == payload
    for s in segs:
        assert l4_ok(s)
        assert struct.unpack_from("!H", s, (40 if v6 else 20) + 4)[0] == len(s) - (40 if v6 else 20)


def test_hdr_len_is_not_trusted() -> None:
    # On forwarded traffic the kernel may claim hdr_len = the whole first packet.
    payload = bytes(range(256)) * 20
    frame = bytearray(super_tcp(payload, 1000, options=TS_OPTION))
    struct.pack_into("=H", frame, 2, 1072)
    segs, _ = gso_split(frame)
    assert b"".join(payload_of(s) for s in segs) == payload
    assert all(l4_ok(s) for s in segs)


def test_needs_csum_single_packet_is_finished() -> None:
    for pkt in (tcp(b"abc" * 33, seq=1, csum=False), udp(b"hello"), tcp(b"z", seq=9, v6=True)):
        part = partial(pkt)
        ip = parse_ip(part)
        coff = 16 if ip.protocol == 6 else 6
        hdr = VirtioNetHdr(F_NEEDS_CSUM, GSO_NONE, 0, 0, ip.header_length, coff)
        segs, _ = gso_split(hdr.pack() + part)
        assert len(segs) == 1 and l4_ok(segs[0])


def test_plain_packet_passes_through() -> None:
    pkt = tcp(b"data", seq=5)
    assert gso_split(bytes(10) + pkt)[0] == [pkt]


def test_segments_are_zero_padded_rows() -> None:
    arena = bytearray(b"\xee" * 200_000)
    frame = super_tcp(b"\x01" * 3003, 1001)
    arena[: len(frame)] = frame
    sp = Splitter(arena)
    out: list[memoryview] = []
    end = sp.split(0, len(frame), 70_000, out)
    assert [len(v) for v in out] == [1041] * 3
    for i in range(3):
        row = arena[70_000 + i * 1056 : 70_000 + (i + 1) * 1056]
        assert row[:1041] == out[i] and row[1041:] == bytes(15)
    assert end == 70_000 + 3 * 1056


@given(
    st.binary(max_size=200),
    st.integers(0, 5),
    st.integers(0, 255),
    st.integers(0, 100),
    st.integers(0, 3000),
    st.integers(0, 80),
    st.integers(0, 30),
)
def test_split_never_raises(
    body: bytes, gso_type: int, flags: int, hdr_len: int, gso: int, cstart: int, coff: int
) -> None:
    frame = VirtioNetHdr(flags, gso_type, hdr_len, gso, cstart, coff).pack() + body
    arena = bytearray(len(frame) + split_room(len(frame)))
    arena[: len(frame)] = frame
    sp = Splitter(arena)
    out: list[memoryview] = []
    end = sp.split(0, len(frame), len(frame), out)
    assert end <= len(arena)
    if gso_type not in (GSO_NONE,) and not out:
        assert sum(sp.stats.dropped.values()) == 1


def test_malformed_frames_are_counted() -> None:
    good = super_tcp(b"x" * 3000, 1000)
    cases: dict[str, bytes] = {
        "short": b"\x00" * 5,
        "gso_type": bytes([1, 3]) + good[2:],  # legacy UFO
        "gso_version": super_tcp(b"x" * 3000, 1000, v6=True)[:1]
        + bytes([GSO_TCPV4])
        + good[2:10]
        + super_tcp(b"x" * 3000, 1000, v6=True)[10:],
        "no_payload": super_tcp(b"", 1000),
        "l4_header": good[:8] + b"\x07" + good[9:],  # csum_offset 7 is not TCP's
    }
    for reason, frame in cases.items():
        segs, stats = gso_split(bytes(frame))
        assert segs == [] and stats.dropped == {reason: 1}, reason
    udp_as_tcp = bytearray(super_udp(b"y" * 3000, 1000))
    udp_as_tcp[1] = GSO_TCPV4
    assert gso_split(bytes(udp_as_tcp))[1].dropped == {"ip_header": 1}
    tiny_gso = super_udp(b"y" * 3000, 1)
    assert gso_split(tiny_gso)[1].dropped == {"too_many_segments": 1}
    assert gso_split(tiny_gso, max_segments=3000)[0][0][28:] == b"y"
    assert GSO_UDP_L4 == 5


def test_padding_to_wireguard_lengths() -> None:
    # pad_mtu extends views with zeros to min(roundup16(len), mtu)
    # (docs/protocol/wireguard.md §5.1).
    pkt = tcp(b"q" * 44, seq=1)  # 84 bytes -> 96
    frames = [bytes(10) + pkt, super_tcp(b"r" * 3000, 1380)]  # segments 1420 (cap) and 280
    for frame, want in zip(frames, [[96], [1420, 1420, 288]], strict=True):
        arena = bytearray(b"\xee" * (len(frame) + split_room(len(frame))))
        arena[: len(frame)] = frame
        out: list[memoryview] = []
        end = Splitter(arena).split(0, len(frame), len(frame), out, pad_mtu=1420)
        assert [len(v) for v in out] == want
        for v in out:
            ip_len = parse_ip(v).total_length
            assert bytes(v[ip_len:]) == bytes(len(v) - ip_len)
            assert l4_ok(bytes(v[:ip_len]))
        assert set(arena[end:]) == {0xEE}  # nothing written past the returned offset


@pytest.mark.parametrize("nseg", [2, 6])  # the scalar and the numpy path
def test_ecn_cwr_only_on_first_segment(nseg: int) -> None:
    frame = bytearray(super_tcp(b"e" * 1000 * nseg, 1000, flags=0x90))  # CWR | ACK
    frame[1] |= GSO_ECN
    segs, _ = gso_split(bytes(frame))
    assert [TCPHeader.parse(s[20:]).flags for s in segs] == [0x90] + [0x10] * (nseg - 1)
    assert all(l4_ok(s) for s in segs)


def _split_with(frame: bytes, native: bool, pad_mtu: int) -> tuple[bytes, list[bytes]]:
    arena = bytearray(len(frame) + split_room(len(frame)))
    arena[: len(frame)] = frame
    sp = Splitter(arena)
    sp.native = native
    out: list[memoryview] = []
    end = sp.split(0, len(frame), len(frame), out, pad_mtu)
    return bytes(arena[:end]), [bytes(v) for v in out]


@pytest.mark.skipif(tso._split_rows is None, reason="_segment.c not built")
@given(
    st.binary(min_size=1, max_size=9000),
    st.integers(1, 1500),
    st.booleans(),
    st.sampled_from(["tcp", "udp", "tcp-ecn", "tcp-opts"]),
    st.integers(0, 2**32 - 1),
    st.sampled_from([0, 1420]),
)
def test_native_rows_are_byte_identical_to_numpy(
    payload: bytes, gso: int, v6: bool, kind: str, seq: int, pad_mtu: int
) -> None:
    if kind == "udp":
        frame = bytearray(super_udp(payload, gso, v6=v6))
    else:
        opts = TS_OPTION if kind == "tcp-opts" else b""
        frame = bytearray(super_tcp(payload, gso, v6=v6, seq=seq, flags=0x99, options=opts))
        if kind == "tcp-ecn":
            frame[1] |= GSO_ECN
    assert _split_with(bytes(frame), True, pad_mtu) == _split_with(bytes(frame), False, pad_mtu)
