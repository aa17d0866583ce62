"""meshscale.wgengine.router: the OS side of the tailnet (tailscale wgengine/router).

config   Config (addresses, routes) and the Router protocol: the seam for subnet
         routes and exit nodes
netlink  NetlinkRouter: Linux addresses, routes (table 52), rules and MTU through pyroute2
nft      the subnet router / exit node netfilter table (libnftables)
routes   advertised-route validation (pure)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from meshscale.lazy import lazy_names

if TYPE_CHECKING:
    from .config import TAILNET_ROUTES, TUN_MTU, Config, Router
    from .netlink import NetlinkRouter, RouterError, ip_forwarding_warning

# Imported on first use (PEP 562): the CLI's route checks (routes) need no pyroute2.
_HOME = {
    "TAILNET_ROUTES": "config",
    "TUN_MTU": "config",
    "Config": "config",
    "Router": "config",
    "NetlinkRouter": "netlink",
    "RouterError": "netlink",
    "ip_forwarding_warning": "netlink",
}

__getattr__ = lazy_names(__name__, _HOME, globals())


__all__ = [
    "TAILNET_ROUTES",
    "TUN_MTU",
    "Config",
    "NetlinkRouter",
    "Router",
    "RouterError",
    "ip_forwarding_warning",
]
