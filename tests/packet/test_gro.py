from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshscale.packet import (
    F_NEEDS_CSUM,
    GSO_TCPV4,
    GSO_TCPV6,
    GSO_UDP_L4,
    MAX_SEGMENTS,
    ZERO_HDR,
    Coalescer,
    VirtioNetHdr,
    coalesce,
    gso_split,
)

from .builders import kernel_receive, l4_ok, ref_sum, super_tcp, super_udp, tcp, udp

TS = b"\x01\x01\x08\x0a" + bytes(range(8))


def stream(
    n: int, size: int, *, seq: int = 100, v6: bool = False, last_psh: bool = True, **kw: Any
) -> list[bytes]:
    return [
        tcp(
            bytes([i]) * size,
            seq=seq + i * size,
            flags=0x18 if last_psh and i == n - 1 else 0x10,
            v6=v6,
            **kw,
        )
        for i in range(n)
    ]


@given(
    st.binary(min_size=1, max_size=12000),
    st.integers(200, 1400),
    st.booleans(),
    st.booleans(),
    st.booleans(),
)
def test_split_then_coalesce_round_trips(
    payload: bytes, gso: int, v6: bool, is_udp: bool, verify: bool
) -> None:
    frame = super_udp(payload, gso, v6=v6) if is_udp else super_tcp(payload, gso, v6=v6, options=TS)
    segs, _ = gso_split(frame)
    assert segs and all(l4_ok(s) for s in segs)
    outs = Coalescer(udp=is_udp, verify_checksums=verify).coalesce(segs)
    assert len(outs) == 1
    whole = kernel_receive(outs[0])
    hdr = VirtioNetHdr.unpack(outs[0][0])
    if len(segs) == 1:
        assert outs[0] == [ZERO_HDR, segs[0]]
        return
    iph = 40 if v6 else 20
    want_type = GSO_UDP_L4 if is_udp else (GSO_TCPV6 if v6 else GSO_TCPV4)
    assert hdr == VirtioNetHdr(
        F_NEEDS_CSUM, want_type, iph + (8 if is_udp else 32), gso, iph, 6 if is_udp else 16
    )
    assert whole[hdr.hdr_len :] == payload
    # The kernel would segment it again exactly as the sender's kernel did.
    resplit, _ = gso_split(bytes(outs[0][0]) + whole)
    assert resplit == segs


def test_tcp_stream_coalesces_and_keeps_psh() -> None:
    pkts = stream(5, 1000, options=TS)
    (entry,) = coalesce(pkts)
    whole = kernel_receive(entry)
    assert whole[20 + 13] == 0x18
    assert len(entry) == 2 + 5 and VirtioNetHdr.unpack(entry[0]).gso_size == 1000


def test_flows_are_kept_apart_and_in_order() -> None:
    a = stream(3, 500, sport=1, last_psh=False)
    b = stream(3, 500, sport=2, last_psh=False)
    mixed = [a[0], b[0], a[1], b[1], a[2], b[2]]
    outs = coalesce(mixed)
    assert len(outs) == 2
    assert [kernel_receive(o)[20:22] for o in outs] == [b"\x00\x01", b"\x00\x02"]


def _single(outs: list[list[Any]]) -> None:
    for o in outs:
        assert o[0] == ZERO_HDR and len(o) == 2


def test_rules_that_prevent_coalescing() -> None:
    cases = {
        "psh in the middle": [tcp(b"a" * 100, seq=0, flags=0x18), tcp(b"b" * 100, seq=100)],
        "gap in seq": [tcp(b"a" * 100, seq=0), tcp(b"b" * 100, seq=101)],
        "bigger after smaller": [tcp(b"a" * 100, seq=0), tcp(b"b" * 200, seq=100)],
        "syn": [tcp(b"a" * 100, seq=0, flags=0x12), tcp(b"b" * 100, seq=100, flags=0x12)],
        "fin": [tcp(b"a" * 100, seq=0), tcp(b"b" * 100, seq=100, flags=0x11)],
        "pure acks": [tcp(b"", seq=0), tcp(b"", seq=0)],
        "different ack": [tcp(b"a" * 100, seq=0, ack=1), tcp(b"b" * 100, seq=100, ack=2)],
        "different options": [
            tcp(b"a" * 100, seq=0, options=TS),
            tcp(b"b" * 100, seq=100, options=TS[:-1] + b"\x09"),
        ],
        "bad checksum": [tcp(b"a" * 100, seq=0), tcp(b"b" * 100, seq=100, csum=False)],
        "bad first checksum": [tcp(b"a" * 100, seq=0, csum=False), tcp(b"b" * 100, seq=100)],
        "udp without uso": [udp(b"a" * 100), udp(b"b" * 100)],
        "v4 v6 mix": [tcp(b"a" * 100, seq=0), tcp(b"b" * 100, seq=100, v6=True)],
    }
    for name, pkts in cases.items():
        outs = coalesce(pkts)
        assert len(outs) == 2, name
        _single(outs)


def test_ip_fields_must_match() -> None:
    a, b = stream(2, 100, last_psh=False)
    for off, val in ((8, 3), (1, 4), (6, 0)):  # TTL, TOS, DF
        c = bytearray(b)
        c[off] = val
        c[10:12] = b"\0\0"
        c[10:12] = (0xFFFF - ref_sum(bytes(c[:20]))).to_bytes(2, "big")
        assert len(coalesce([a, bytes(c)])) == 2, off


def test_fragments_and_options_are_single() -> None:
    a, b = stream(2, 100, last_psh=False)
    frag = bytearray(b)
    frag[6] = 0x20  # MF
    assert len(coalesce([a, bytes(frag)])) == 2
    short = [b"\x45\x00", b"", b"\x60" + bytes(50), bytes(40)]
    _single(coalesce(short))


def test_smaller_segment_closes_the_group() -> None:
    pkts = [tcp(b"a" * 100, seq=0), tcp(b"b" * 50, seq=100), tcp(b"c" * 50, seq=150)]
    outs = coalesce(pkts)
    assert len(outs) == 2 and len(outs[0]) == 4


def test_size_limit() -> None:
    pkts = stream(60, 1400, last_psh=False)
    outs = coalesce(pkts)
    assert len(outs) == 2
    assert sum(len(kernel_receive(o)) for o in outs) == sum(len(p) for p in pkts) - 40 * 58
    assert all(len(kernel_receive(o)) <= 65535 for o in outs)


def test_udp_appends_only_to_newest() -> None:
    pkts = [udp(b"a" * 100), udp(b"b" * 100), udp(b"c" * 40), udp(b"d" * 100), udp(b"e" * 100)]
    outs = coalesce(pkts, udp=True)
    assert len(outs) == 2
    assert kernel_receive(outs[0])[28:] == b"a" * 100 + b"b" * 100 + b"c" * 40
    assert kernel_receive(outs[1])[28:] == b"d" * 100 + b"e" * 100


def test_memoryview_input_and_stats() -> None:
    pkts = [memoryview(p) for p in stream(4, 300, v6=True)]
    c = Coalescer()
    outs = c.coalesce(pkts)
    assert len(outs) == 1 and kernel_receive(outs[0])
    assert (c.stats.packets, c.stats.writes, c.stats.coalesced) == (4, 1, 3)
    c.coalesce([tcp(b"a" * 9, seq=0), tcp(b"b" * 9, seq=9, csum=False)])
    assert c.stats.bad_checksum == 1
    assert MAX_SEGMENTS == 128


@given(st.lists(st.binary(max_size=120), max_size=12))
def test_coalesce_never_raises_and_keeps_every_byte(pkts: list[bytes]) -> None:
    outs = coalesce(pkts, udp=True)
    assert sum(1 if o[0] == ZERO_HDR else len(o) - 2 for o in outs) == len(pkts)


@pytest.mark.slow
@given(
    st.lists(st.tuples(st.integers(1, 300), st.booleans()), min_size=1, max_size=30),
    st.booleans(),
)
def test_corrupt_packets_are_never_merged(spec: list[tuple[int, bool]], v6: bool) -> None:
    # Odd and even sizes, some packets with a wrong checksum: a merged (NEEDS_CSUM) write would
    # make the kernel accept corrupt data, so those must only ever go out alone.
    pkts, corrupt, seq = [], set(), 1
    size0 = max(s for s, _ in spec)
    for i, (size, bad) in enumerate(spec):
        size = size0 if i < len(spec) - 1 else size  # equal sizes, last may be smaller
        payload = bytes([i]) * size
        pkts.append(tcp(payload, seq=seq, v6=v6, csum=not bad))
        if bad:
            corrupt.add(payload)
        seq += size
    outs = coalesce(pkts)
    seen = []
    for o in outs:
        if o[0] == ZERO_HDR:
            seen.append(bytes(o[1])[(60 if v6 else 40) :])
        else:
            parts = [bytes(b) for b in o[2:]]
            assert not corrupt & set(parts)
            kernel_receive(o)
            seen += parts
    assert seen == [
        bytes([i]) * (size0 if i < len(spec) - 1 else spec[-1][0]) for i in range(len(spec))
    ]


@pytest.mark.parametrize("v6", [False, True])
def test_wireguard_padding_is_trimmed(v6: bool) -> None:
    pkts = stream(4, 1001, v6=v6)
    padded = [p + bytes(-len(p) % 16) for p in pkts]
    (entry,) = coalesce(padded)
    whole = kernel_receive(entry)
    assert len(whole) == len(pkts[0]) + 3 * 1001
    (single,) = coalesce(padded[:1])
    assert single == [ZERO_HDR, pkts[0]]
    assert len(coalesce([tcp(b"x", seq=1)[:-1]])[0]) == 2  # shorter than its IP length
