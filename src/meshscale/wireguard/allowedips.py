"""Cryptokey routing: longest-prefix match from inner addresses to peers
(docs/protocol/wireguard.md §7).

One table per address family. Instead of wireguard-go's trie we keep, per prefix length in
use, a dict from masked network value to peer, and probe the lengths longest first: a device
rarely uses more than a handful of distinct lengths, so a lookup is a few dict probes.
A prefix belongs to at most one peer; inserting it for another peer moves it.
"""

from __future__ import annotations

from ipaddress import IPv4Network, IPv6Network, ip_network
from typing import Generic, TypeVar

P = TypeVar("P")
Network = IPv4Network | IPv6Network


class _Family(Generic[P]):
    __slots__ = ("bits", "lengths", "tables")

    def __init__(self, bits: int) -> None:
        self.bits = bits
        self.tables: dict[int, dict[int, P]] = {}
        self.lengths: list[int] = []  # descending

    def insert(self, value: int, plen: int, peer: P) -> None:
        table = self.tables.get(plen)
        if table is None:
            table = self.tables[plen] = {}
            self.lengths = sorted(self.tables, reverse=True)
        table[value >> (self.bits - plen)] = peer

    def remove(self, value: int, plen: int) -> None:
        table = self.tables.get(plen)
        if table is None:
            return
        table.pop(value >> (self.bits - plen), None)
        if not table:
            del self.tables[plen]
            self.lengths = sorted(self.tables, reverse=True)

    def lookup(self, value: int) -> P | None:
        bits = self.bits
        tables = self.tables
        for plen in self.lengths:
            peer = tables[plen].get(value >> (bits - plen))
            if peer is not None:
                return peer
        return None


class AllowedIPs(Generic[P]):
    """Maps prefixes to peers; peers are any hashable objects."""

    __slots__ = ("_by_peer", "_v4", "_v6")

    def __init__(self) -> None:
        self._v4: _Family[P] = _Family(32)
        self._v6: _Family[P] = _Family(128)
        self._by_peer: dict[P, set[Network]] = {}

    def _family(self, net: Network) -> _Family[P]:
        return self._v4 if net.version == 4 else self._v6

    def insert(self, prefix: Network | str, peer: P) -> None:
        """Add prefix for peer (host bits are masked off); moves it from any other peer."""
        net = ip_network(prefix, strict=False) if isinstance(prefix, str) else prefix
        fam = self._family(net)
        value = int(net.network_address)
        table = fam.tables.get(net.prefixlen)
        owner = table.get(value >> (fam.bits - net.prefixlen)) if table else None
        if owner is not None and owner != peer:
            self._by_peer[owner].discard(net)
        fam.insert(value, net.prefixlen, peer)
        self._by_peer.setdefault(peer, set()).add(net)

    def remove(self, prefix: Network, peer: P) -> None:
        """Remove prefix if (and only if) it belongs to peer."""
        net = prefix
        nets = self._by_peer.get(peer)
        if not nets or net not in nets:
            return
        nets.discard(net)
        self._family(net).remove(int(net.network_address), net.prefixlen)

    def remove_peer(self, peer: P) -> None:
        for net in self._by_peer.pop(peer, set()):
            self._family(net).remove(int(net.network_address), net.prefixlen)

    def prefixes(self, peer: P) -> list[Network]:
        """The peer's prefixes, IPv4 first, in address order."""
        nets = self._by_peer.get(peer, set())
        return sorted(nets, key=lambda n: (n.version, int(n.network_address), n.prefixlen))

    def lookup_v4(self, addr: bytes | memoryview) -> P | None:
        return self._v4.lookup(int.from_bytes(addr, "big"))

    def lookup_v6(self, addr: bytes | memoryview) -> P | None:
        return self._v6.lookup(int.from_bytes(addr, "big"))

    def lookup(self, addr: bytes | memoryview) -> P | None:
        """Look up a 4- or 16-byte address."""
        if len(addr) == 4:
            return self._v4.lookup(int.from_bytes(addr, "big"))
        return self._v6.lookup(int.from_bytes(addr, "big"))
