"""Which endpoints a node advertises to control and in CallMeMaybe
(docs/protocol/derp-disco-stun.md §5.1).

Port-mapped addresses (NAT-PMP, PCP or UPnP IGD on the gateway), then STUN-mapped
addresses (from the latest netcheck report), then local interface
addresses with the socket's port (loopback only when there is nothing else,
IPv6 link-local never), then endpoints seen in the last 5 min 10 s that this
round missed (at most 6 per IP), so that a flaky STUN answer does not make a
working mapping vanish from peers' candidate lists.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from meshscale.disco import AddrPort, IPAddress
from meshscale.magicsock.events import AdvertisedEndpoint, EndpointType

ENDPOINT_CACHE_TIME = 310.0  # seconds: recently seen endpoints stay advertised
ENDPOINT_CACHE_PER_IP = 6  # most recent endpoints kept per IP, so one NAT cannot grow it


class EndpointAdvertiser:
    """Computes the advertised endpoint list and remembers recent ones. Performs no I/O."""

    def __init__(self) -> None:
        self._cache: dict[AddrPort, tuple[EndpointType, float]] = {}

    def compute(
        self,
        stun: Iterable[AddrPort],
        local_ips: Iterable[IPAddress],
        port: int,
        now: float,
        *,
        fresh: bool,
        portmapped: Iterable[AddrPort] = (),
    ) -> tuple[AdvertisedEndpoint, ...]:
        """The list to advertise; ``fresh`` marks this round's addresses as just seen."""
        eps = [AdvertisedEndpoint(a, EndpointType.PORTMAPPED) for a in portmapped]
        eps += [AdvertisedEndpoint(a, EndpointType.STUN) for a in stun]
        local = [
            ip
            for ip in local_ips
            if not (isinstance(ip, ipaddress.IPv6Address) and ip.is_link_local)
        ]
        if any(not ip.is_loopback for ip in local):
            local = [ip for ip in local if not ip.is_loopback]
        eps += [AdvertisedEndpoint(AddrPort(ip, port), EndpointType.LOCAL) for ip in local]
        if fresh:
            for e in eps:
                self._cache[e.addr] = (e.type, now)
        eps += self._recent(now)
        first: dict[AddrPort, AdvertisedEndpoint] = {}
        for e in eps:
            first.setdefault(e.addr, e)
        return tuple(first.values())

    def _recent(self, now: float) -> list[AdvertisedEndpoint]:
        per_ip: dict[IPAddress, int] = {}
        out: list[AdvertisedEndpoint] = []
        for addr, (typ, at) in sorted(self._cache.items(), key=lambda kv: -kv[1][1]):
            n = per_ip.get(addr.ip, 0)
            if now - at > ENDPOINT_CACHE_TIME or n >= ENDPOINT_CACHE_PER_IP:
                del self._cache[addr]
                continue
            per_ip[addr.ip] = n + 1
            out.append(AdvertisedEndpoint(addr, typ))
        return out
