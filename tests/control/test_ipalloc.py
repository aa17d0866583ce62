"""Tailnet address allocation: unique, inside the prefix, never reserved addresses."""

from __future__ import annotations

import ipaddress
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshscale.control.ipalloc import AllocationStrategy, IPAllocator, is_reserved
from meshscale.control.models import AddressExhausted

V4 = ipaddress.IPv4Network
V6 = ipaddress.IPv6Network


def test_sequential_skips_network_and_reserved() -> None:
    alloc = IPAllocator(V4("100.100.100.96/27"), None)
    got = [alloc.allocate()[0] for _ in range(29)]
    assert got[0] == ipaddress.IPv4Address("100.100.100.97")
    assert ipaddress.IPv4Address("100.100.100.100") not in got
    assert ipaddress.IPv4Address("100.100.100.127") not in got  # broadcast
    with pytest.raises(AddressExhausted):
        alloc.allocate()


def test_chromeos_range_and_v6_service_address_are_reserved() -> None:
    assert is_reserved(ipaddress.ip_address("100.115.92.1"))
    assert is_reserved(ipaddress.ip_address("100.115.93.255"))
    assert not is_reserved(ipaddress.ip_address("100.115.94.0"))
    assert is_reserved(ipaddress.ip_address("fd7a:115c:a1e0::53"))
    alloc = IPAllocator(None, V6("fd7a:115c:a1e0::50/124"))
    got = {alloc.allocate()[1] for _ in range(13)}
    assert ipaddress.ip_address("fd7a:115c:a1e0::53") not in got


def test_used_addresses_are_skipped_and_released_ones_found_again() -> None:
    used: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = [
        ipaddress.IPv4Address("100.64.0.1"),
        ipaddress.IPv6Address("fd7a:115c:a1e0::1"),
    ]
    alloc = IPAllocator(V4("100.64.0.0/29"), V6("fd7a:115c:a1e0::/124"), used=used)
    v4, v6 = alloc.allocate()
    assert (str(v4), str(v6)) == ("100.64.0.2", "fd7a:115c:a1e0::2")
    alloc.release(used[0])
    for _ in range(4):
        alloc.allocate()
    # the sequential cursor wraps around and finds the freed address
    assert alloc.allocate()[0] == used[0]


def test_failure_in_one_family_allocates_nothing() -> None:
    alloc = IPAllocator(V4("100.64.0.0/24"), V6("fd7a:115c:a1e0::/126"))
    alloc.allocate()
    alloc.allocate()
    with pytest.raises(AddressExhausted):
        alloc.allocate()
    assert alloc.pool4 is not None
    assert len(alloc.pool4.used) == 2  # the IPv4 address of the failed attempt was returned


def test_needs_a_prefix() -> None:
    with pytest.raises(ValueError, match="at least one"):
        IPAllocator(None, None)


@pytest.mark.slow
@given(
    st.sampled_from(list(AllocationStrategy)),
    st.integers(0, 2**32),
    st.lists(st.booleans(), max_size=80),
)
def test_allocations_unique_in_prefix_until_exhausted(
    strategy: AllocationStrategy, seed: int, ops: list[bool]
) -> None:
    """Against a set model: allocate (True) or release a random held address (False)."""
    rng = random.Random(seed)
    prefix = V4("100.64.0.0/26")
    alloc = IPAllocator(prefix, None, strategy, randbelow=rng.randrange)
    held: set[ipaddress.IPv4Address] = set()
    for op in ops:
        if op or not held:
            try:
                addr = alloc.allocate()[0]
            except AddressExhausted:
                assert len(held) == 62  # a /26 has 62 hosts and no reserved addresses
                continue
            assert addr is not None
            assert addr in prefix and addr not in held
            assert addr not in (prefix.network_address, prefix.broadcast_address)
            held.add(addr)
        else:
            victim = sorted(held)[rng.randrange(len(held))]
            held.remove(victim)
            alloc.release(victim)
