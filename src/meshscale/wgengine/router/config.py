"""What the OS must carry for the tailnet (tailscale wgengine/router.Config), and the seam.

The backend turns the netmap into a ``Config``; a ``Router`` makes the TUN interface carry
exactly that: its Tailscale addresses, the routes into it (the whole tailnet, 100.64.0.0/10
and fd7a:115c:a1e0::/48, plus accepted subnet routes and, with an exit node, both /0s), which
LAN prefixes stay local, and, on a subnet router or exit node, the prefixes it forwards to
(docs/protocol/policy.md §5.7). Performs no I/O.
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
    # Using routes: with an exit node in ``routes`` (both /0s), the directly attached LAN
    # prefixes stay local ("throw" routes in the tailnet table) when this is set.
    exit_lan_access: bool = False
    # Being a router: the prefixes we serve (approved and advertised). Non-empty means
    # forwarding from the TUN is accepted and, with ``snat``, masqueraded (nftables).
    subnet_routes: tuple[IPNetwork, ...] = ()
    snat: bool = True

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
