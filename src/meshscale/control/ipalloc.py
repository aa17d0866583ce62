"""Tailnet address allocation from ``prefixes.v4`` / ``prefixes.v6``.

A node gets one address per configured prefix when it is created and keeps them for
life (re-registration, key rotation and logout keep them; deletion frees them). Two
strategies, as Headscale's ``prefixes.allocation``:

    sequential   the next free address after the last one handed out, wrapping once
                 around the prefix so freed addresses are found again before giving up
    random       a uniformly random start, then the next free address (wrapping)

Never handed out: the network and broadcast addresses of the prefix, Tailscale's
service addresses 100.100.100.100 and fd7a:115c:a1e0::53, and the ChromeOS VM range
100.115.92.0/23 (Tailscale's tsaddr reserves them; a node there would be unreachable).
"""

from __future__ import annotations

import ipaddress
import secrets
from collections.abc import Callable, Iterable
from enum import StrEnum
from typing import Final

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

RESERVED_ADDRESSES: Final = frozenset(
    {ipaddress.ip_address("100.100.100.100"), ipaddress.ip_address("fd7a:115c:a1e0::53")}
)
RESERVED_NETWORKS: Final = (ipaddress.ip_network("100.115.92.0/23"),)


class AllocationStrategy(StrEnum):
    SEQUENTIAL = "sequential"
    RANDOM = "random"


def is_reserved(addr: IPAddress) -> bool:
    return addr in RESERVED_ADDRESSES or any(addr in net for net in RESERVED_NETWORKS)


class _Pool:
    """One prefix: the used set and the sequential cursor, as integers."""

    def __init__(
        self,
        prefix: ipaddress.IPv4Network | ipaddress.IPv6Network,
        strategy: AllocationStrategy,
        randbelow: Callable[[int], int],
    ) -> None:
        self.prefix = prefix
        self.strategy = strategy
        self.randbelow = randbelow
        self.first = int(prefix.network_address)
        self.last = int(prefix.broadcast_address)
        self.used: set[int] = set()
        self.cursor = self.first  # last address handed out (sequential)

    def _usable(self, value: int) -> bool:
        if value in self.used or value in (self.first, self.last):
            return False
        return not is_reserved(ipaddress.ip_address(value))

    def mark(self, addr: IPAddress) -> None:
        if addr in self.prefix:
            self.used.add(int(addr))

    def release(self, addr: IPAddress) -> None:
        self.used.discard(int(addr))

    def allocate(self) -> IPAddress:
        size = self.last - self.first + 1
        if self.strategy is AllocationStrategy.RANDOM:
            start = self.first + self.randbelow(size)
        else:
            start = self.cursor + 1
        # Walk at most once around the prefix. Reserved and used addresses are a tiny
        # part of a /10 or /48, so this stops quickly unless the pool is nearly full.
        value = start
        for _ in range(size):
            if value > self.last:
                value = self.first
            if self._usable(value):
                self.used.add(value)
                self.cursor = value
                return ipaddress.ip_address(value)
            value += 1
        # Imported here: the CLI loads this module (config's AllocationStrategy), and models
        # pulls in the key types, cryptography and asyncio.
        from meshscale.control.models import AddressExhausted

        raise AddressExhausted(f"no free address left in {self.prefix}")


class IPAllocator:
    """Hands out unique addresses. Not thread-safe: State calls it under its lock.

    Parameters:
      prefix4, prefix6: the tailnet prefixes (either may be None, not both).
      strategy: sequential or random.
      used: addresses already held by nodes (loaded from the database).
      randbelow: ``randbelow(n)`` -> int in [0, n); passed in so tests are deterministic.
    """

    def __init__(
        self,
        prefix4: ipaddress.IPv4Network | None,
        prefix6: ipaddress.IPv6Network | None,
        strategy: AllocationStrategy = AllocationStrategy.SEQUENTIAL,
        used: Iterable[IPAddress] = (),
        randbelow: Callable[[int], int] = secrets.randbelow,
    ) -> None:
        if prefix4 is None and prefix6 is None:
            raise ValueError("at least one of prefixes.v4 and prefixes.v6 is required")
        self.pool4 = _Pool(prefix4, strategy, randbelow) if prefix4 is not None else None
        self.pool6 = _Pool(prefix6, strategy, randbelow) if prefix6 is not None else None
        for addr in used:
            self.mark_used(addr)

    def mark_used(self, addr: IPAddress) -> None:
        pool = self.pool4 if addr.version == 4 else self.pool6
        if pool is not None:
            pool.mark(addr)

    def release(self, addr: IPAddress | None) -> None:
        if addr is None:
            return
        pool = self.pool4 if addr.version == 4 else self.pool6
        if pool is not None:
            pool.release(addr)

    def allocate(self) -> tuple[ipaddress.IPv4Address | None, ipaddress.IPv6Address | None]:
        """One address per configured prefix. Raises AddressExhausted (and allocates
        nothing) if either prefix is full."""
        from meshscale.control.models import AddressExhausted  # (see _Pool.allocate)

        v4: ipaddress.IPv4Address | None = None
        v6: ipaddress.IPv6Address | None = None
        if self.pool4 is not None:
            a4 = self.pool4.allocate()
            assert isinstance(a4, ipaddress.IPv4Address)
            v4 = a4
        if self.pool6 is not None:
            try:
                a6 = self.pool6.allocate()
            except AddressExhausted:
                self.release(v4)
                raise
            assert isinstance(a6, ipaddress.IPv6Address)
            v6 = a6
        return v4, v6
