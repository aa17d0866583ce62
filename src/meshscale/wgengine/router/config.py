"""What the OS must carry for the tailnet (tailscale wgengine/router.Config), and the seam.

The backend turns the netmap into a ``Config``; a ``Router`` makes the TUN interface carry
exactly that. Today a node has its Tailscale addresses and routes the whole tailnet
(100.64.0.0/10, fd7a:115c:a1e0::/48) into the interface; subnet routes and exit nodes will
add prefixes to ``routes`` here, and firewall rules beside it, without touching the backend's
callers. Performs no I/O.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

TUN_MTU = 1280  # bytes: the IPv6 minimum, what tailscaled uses
TAILNET_ROUTES: tuple[IPNetwork, ...] = (
    ipaddress.ip_network("100.64.0.0/10"),
    ipaddress.ip_network("fd7a:115c:a1e0::/48"),
)


@dataclass(frozen=True, slots=True)
class Config:
    """The interface's addresses (each installed as a host prefix, /32 or /128) and the
    destinations routed into it. The empty Config clears the addresses."""

    local_addrs: tuple[IPAddress, ...] = ()
    routes: tuple[IPNetwork, ...] = ()

    @classmethod
    def for_addresses(cls, addresses: Iterable[str]) -> Config:
        """Our addresses as the netmap gives them (``100.64.0.1/32`` or bare IPs), with the
        tailnet routes when there is at least one. Raises ValueError on a bad address."""
        local = tuple(dict.fromkeys(ipaddress.ip_interface(a).ip for a in addresses))
        return cls(local, TAILNET_ROUTES if local else ())


class Router(Protocol):
    """Applies a Config to one interface (the netlink one: ``netlink.NetlinkRouter``)."""

    ifname: str

    def up(self) -> None:
        """Set the interface up with MTU ``TUN_MTU``. Raises OSError."""
        ...

    def set(self, config: Config) -> None:
        """Make the interface carry exactly ``config``; idempotent. Raises OSError."""
        ...
