"""The Linux router: TUN addresses and routes through netlink (pyroute2).

``NetlinkRouter.set(config)`` makes the interface carry exactly the Config's addresses (as
host prefixes) and its routes (today the whole tailnet, 100.64.0.0/10 and
fd7a:115c:a1e0::/48), with MTU 1280, and is idempotent: the same Config changes nothing.
Routes are added with ``replace`` and never deleted; the kernel may drop them with the last
address, so they are added again with the next one.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
from collections.abc import Callable
from typing import TypeVar

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from .config import TUN_MTU, Config, IPNetwork

log = logging.getLogger("meshscale.router")
T = TypeVar("T")

CGNAT = ipaddress.ip_network("100.64.0.0/10")
EEXIST = 17
ENOENT = 2
ESRCH = 3
EADDRNOTAVAIL = 99


class RouterError(OSError):
    """The interface could not be configured."""


def _off_loop(fn: Callable[[], T]) -> T:
    """Run ``fn`` in a short-lived thread: pyroute2's synchronous IPRoute drives its own
    asyncio loop and refuses to run on a thread whose loop is already running."""
    box: list[T] = []
    err: list[BaseException] = []

    def target() -> None:
        try:
            box.append(fn())
        except BaseException as exc:
            err.append(exc)

    t = threading.Thread(target=target, name="netlink")
    t.start()
    t.join()
    if err:
        raise err[0]
    return box[0]


class NetlinkRouter:
    """``config.Router`` for one Linux interface."""

    def __init__(self, ifname: str) -> None:
        self.ifname = ifname
        self._addrs: set[str] = set()
        self._routes: tuple[IPNetwork, ...] = ()
        self._routes_done = False

    def _index(self, ipr: IPRoute) -> int:
        found = ipr.link_lookup(ifname=self.ifname)
        if not found:
            raise RouterError(f"interface {self.ifname} does not exist")
        return int(found[0])

    def up(self) -> None:
        _off_loop(self._up)

    def _up(self) -> None:
        with IPRoute() as ipr:
            idx = self._index(ipr)
            ipr.link("set", index=idx, mtu=TUN_MTU, state="up")

    def set(self, config: Config) -> None:
        _off_loop(lambda: self._set(config))

    def _set(self, config: Config) -> None:
        want = {str(ip) for ip in config.local_addrs}
        with IPRoute() as ipr:
            idx = self._index(ipr)
            for a in sorted(self._addrs - want):
                ip = ipaddress.ip_address(a)
                try:
                    ipr.addr("del", index=idx, address=a, prefixlen=ip.max_prefixlen)
                except NetlinkError as exc:
                    if exc.code not in (EADDRNOTAVAIL, ENOENT):
                        raise RouterError(f"removing {a}: {exc}") from exc
            for a in sorted(want - self._addrs):
                ip = ipaddress.ip_address(a)
                try:
                    ipr.addr("add", index=idx, address=a, prefixlen=ip.max_prefixlen)
                except NetlinkError as exc:
                    if exc.code != EEXIST:
                        raise RouterError(f"adding {a}: {exc}") from exc
            changed = want != self._addrs or config.routes != self._routes
            self._addrs = want
            # The kernel may drop the device routes with the last address: re-add them.
            if want and (changed or not self._routes_done):
                self._routes = config.routes
                for net in config.routes:
                    dst = str(net)
                    try:
                        ipr.route("replace", dst=dst, oif=idx)
                    except NetlinkError as exc:
                        # A namespace without IPv6 cannot take the v6 route; v4 still works.
                        log.warning("route %s via %s: %s", dst, self.ifname, exc)
                self._routes_done = True

    @staticmethod
    def local_addresses(exclude: str) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
        """Addresses of the other interfaces, for endpoint discovery (not loopback)."""
        return _off_loop(lambda: NetlinkRouter._local_addresses(exclude))

    @staticmethod
    def _local_addresses(exclude: str) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
        out: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
        with IPRoute() as ipr:
            names = {int(ln["index"]): ln.get_attr("IFLA_IFNAME") for ln in ipr.get_links()}
            for a in ipr.get_addr():
                if names.get(int(a["index"])) in (exclude, "lo"):
                    continue
                text = a.get_attr("IFA_ADDRESS")
                if not text:
                    continue
                ip = ipaddress.ip_address(text)
                if ip.is_loopback or ip.is_link_local or ip in CGNAT:
                    continue
                out.append(ip)
        return sorted(out, key=lambda i: (i.version, int(i)))
