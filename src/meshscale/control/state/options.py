"""StateOptions: the parts of the configuration State needs (built from ControlConfig)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

from meshscale.control.ipalloc import AllocationStrategy

DEFAULT_PREFIX_V4: Final = ipaddress.IPv4Network("100.64.0.0/10")  # Tailscale's CGNAT range
DEFAULT_PREFIX_V6: Final = ipaddress.IPv6Network("fd7a:115c:a1e0::/48")  # Tailscale's ULA


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class StateOptions:
    """Address prefixes, allocation strategy and timeouts."""

    prefix_v4: ipaddress.IPv4Network | None = DEFAULT_PREFIX_V4
    prefix_v6: ipaddress.IPv6Network | None = DEFAULT_PREFIX_V6
    allocation: AllocationStrategy = AllocationStrategy.SEQUENTIAL
    ephemeral_inactivity_timeout: timedelta = timedelta(minutes=30)
    registration_ttl: timedelta = timedelta(minutes=15)  # a pending interactive login
    node_expiry: timedelta | None = None  # None: node keys never expire (node.expiry: 0)
    # server_url's host: no tailnet's MagicDNS base domain may contain it (the clients
    # would answer it locally and lose their control server), as dns.base_domain.
    server_host: str = ""
