"""meshscale.wgengine.router: the OS side of the tailnet (tailscale wgengine/router).

config   Config (addresses, routes) and the Router protocol: the seam for subnet
         routes and exit nodes
netlink  NetlinkRouter: Linux addresses, routes (table 52), rules and MTU through pyroute2
nft      the subnet router / exit node netfilter table (libnftables)
routes   advertised-route validation (pure)
"""

from .config import TAILNET_ROUTES, TUN_MTU, Config, Router
from .netlink import NetlinkRouter, RouterError, ip_forwarding_warning

__all__ = [
    "TAILNET_ROUTES",
    "TUN_MTU",
    "Config",
    "NetlinkRouter",
    "Router",
    "RouterError",
    "ip_forwarding_warning",
]
