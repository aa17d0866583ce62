"""Vectors and property tests for the WireGuard primitives and parsers."""

from __future__ import annotations

import ipaddress
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshscale.wireguard import messages
from meshscale.wireguard.allowedips import AllowedIPs
from meshscale.wireguard.crypto import C0, H0, KDF2, aead_open, aead_seal
from meshscale.wireguard.replay import WINDOW_SIZE, ReplayFilter
from meshscale.wireguard.tai64n import tai64n


def test_construction_hash_vectors() -> None:
    # Values from the spec (computed with hashlib; equal to constants in other implementations).
    assert C0.hex() == "60e26daef327efc02ec335e2a025d2d016eb4206f87277f52d38d1988b78cd36"
    assert H0.hex() == "2211b361081ac566691243db458ad5322d9c6c662293e8b70ee19c65ba079ef3"


def test_kdf_and_aead_roundtrip() -> None:
    a, b = KDF2(b"\x01" * 32, b"x")
    assert a != b and len(a) == len(b) == 32
    ct = aead_seal(a, 7, b"hello", b"ad")
    assert aead_open(a, 7, ct, b"ad") == b"hello"
    with pytest.raises(ValueError):
        aead_open(a, 8, ct, b"ad")


def test_tai64n_rounds_and_offsets() -> None:
    t = tai64n(1_700_000_000 * 10**9 + 123_456_789)
    secs = int.from_bytes(t[:8], "big")
    nanos = int.from_bytes(t[8:], "big")
    assert secs == (1 << 62) + 10 + 1_700_000_000
    assert nanos % (1 << 24) == 0 and nanos <= 123_456_789
    assert tai64n(2 * 10**18) > t


@given(st.binary(max_size=200))
def test_message_parsers_raise_only_parse_error(data: bytes) -> None:
    for parse in (
        messages.parse_initiation,
        messages.parse_response,
        messages.parse_cookie_reply,
        messages.parse_transport_header,
    ):
        try:
            parse(data)
        except messages.ParseError:
            pass


@given(st.integers(0, 2**32 - 1), st.binary(min_size=32, max_size=32))
def test_initiation_body_roundtrip(sender: int, eph: bytes) -> None:
    m = messages.Initiation(sender, eph, b"s" * 48, b"t" * 28, b"m" * 16, b"n" * 16)
    raw = m.pack_body() + m.mac1 + m.mac2
    assert len(raw) == 148
    assert messages.parse_initiation(raw) == m


class ReferenceWindow:
    """The replay rule as a plain set: the slow model the bitmap must agree with."""

    def __init__(self) -> None:
        self.seen: set[int] = set()
        self.last = 0

    def accept(self, c: int) -> bool:
        if c > self.last:
            self.last = c
        elif self.last - c > WINDOW_SIZE:
            return False
        if c in self.seen:
            return False
        self.seen.add(c)
        return True


@given(st.lists(st.integers(0, 40_000), max_size=400))
def test_replay_filter_matches_reference(counters: list[int]) -> None:
    f, ref = ReplayFilter(), ReferenceWindow()
    for c in counters:
        # Bits older than the window may be reused by the ring: only compare inside it.
        expected = ref.accept(c)
        got = f.accept(c)
        assert got == expected, c


def test_replay_filter_window_edges() -> None:
    f = ReplayFilter()
    assert f.accept(WINDOW_SIZE + 100)
    assert f.accept(100)  # exactly WINDOW_SIZE behind
    assert not f.accept(99)
    assert not f.accept(100)
    assert not f.accept(2**64 - 2**13)  # at REJECT_AFTER_MESSAGES


@given(st.randoms(use_true_random=False))
def test_allowed_ips_longest_prefix_against_slow_reference(rnd: random.Random) -> None:
    table: AllowedIPs[int] = AllowedIPs()
    entries: dict[ipaddress.IPv4Network, int] = {}
    for _ in range(40):
        plen = rnd.choice([0, 8, 16, 24, 28, 32])
        net = ipaddress.IPv4Network((rnd.getrandbits(32), plen), strict=False)
        peer = rnd.randrange(5)
        table.insert(net, peer)
        entries[net] = peer
    for _ in range(100):
        addr = ipaddress.IPv4Address(rnd.getrandbits(32))
        matches = [n for n in entries if addr in n]
        want = entries[max(matches, key=lambda n: n.prefixlen)] if matches else None
        assert table.lookup(addr.packed) == want


def test_allowed_ips_moves_prefix_and_removes_peer() -> None:
    t: AllowedIPs[str] = AllowedIPs()
    t.insert("10.0.0.0/24", "a")
    t.insert("10.0.0.7/24", "b")  # host bits masked: the same prefix moves to b
    assert t.prefixes("a") == []
    assert [str(n) for n in t.prefixes("b")] == ["10.0.0.0/24"]
    t.insert("::/0", "a")
    assert t.lookup(ipaddress.IPv6Address("2001:db8::1").packed) == "a"
    t.remove_peer("a")
    assert t.lookup(ipaddress.IPv6Address("2001:db8::1").packed) is None
    assert t.lookup(ipaddress.IPv4Address("10.0.0.1").packed) == "b"


def test_node_key_shared_with_low_order_point_raises_key_error() -> None:
    from meshscale.key import InvalidKeyError, NodePrivate

    k = NodePrivate(b"\x01" * 32)
    with pytest.raises(InvalidKeyError):
        k.shared(bytes(32))  # the all-zero point: low order
