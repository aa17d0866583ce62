"""meshscale.wgengine.router: the OS side of the tailnet (tailscale wgengine/router).

config   Config (addresses, routes) and the Router protocol: the seam for subnet
         routes and exit nodes
netlink  NetlinkRouter: Linux addresses, routes and MTU through pyroute2
"""

from .config import TAILNET_ROUTES, TUN_MTU, Config, Router
from .netlink import NetlinkRouter, RouterError

__all__ = ["TAILNET_ROUTES", "TUN_MTU", "Config", "NetlinkRouter", "Router", "RouterError"]
