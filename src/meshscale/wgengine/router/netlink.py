"""The Linux router: TUN addresses and routes through netlink (pyroute2).

``NetlinkRouter.set(config)`` makes the interface carry exactly the Config's addresses (as
host prefixes) and its routes, with MTU 1280, and is idempotent. As tailscaled does
(docs/protocol/policy.md §5.7), every route into the TUN lives in routing table 52, which
rule 5270 consults for all traffic; rules 5210/5230/5250 send packets marked 0x80000 (our
own control, DERP and WireGuard sockets, see ``meshscale.io.netmark``) to main/default or
fail them, so the node's own traffic never loops into the tunnel even with an exit node's
default route in table 52. With an exit node and LAN access, the attached LAN prefixes are
"throw" routes in table 52. A subnet router's netfilter table is ``nft.ruleset``. The empty
Config removes routes, rules and the netfilter table.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import socket
import threading
from collections.abc import Callable
from typing import TypeVar

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from .config import TUN_MTU, Config, IPNetwork
from .nft import Netfilter, ruleset, teardown

log = logging.getLogger("meshscale.router")
T = TypeVar("T")

CGNAT = ipaddress.ip_network("100.64.0.0/10")
EEXIST = 17
ENOENT = 2
ESRCH = 3
EADDRNOTAVAIL = 99
RTN_THROW = 9
TABLE = 52  # tailscale's routing table number
SOCKET_MARK = 0x80000  # on every socket of ours (control, DERP, WireGuard UDP)
MARK_MASK = 0xFF0000
RULES: tuple[tuple[int, dict[str, object]], ...] = (
    (5210, {"fwmark": SOCKET_MARK, "fwmask": MARK_MASK, "table": 254}),  # main
    (5230, {"fwmark": SOCKET_MARK, "fwmask": MARK_MASK, "table": 253}),  # default
    (5250, {"fwmark": SOCKET_MARK, "fwmask": MARK_MASK, "action": "FR_ACT_UNREACHABLE"}),
    (5270, {"table": TABLE}),
)


RouteSet = set[tuple[str, str]]  # (dst, "unicast" | "throw") in TABLE


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
        self._routes: RouteSet = set()
        self._rules = False
        self._nft: str | None = None  # the rule set text in force, None: no table
        self._netfilter: Netfilter | None = None

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
            self._addrs = want
            routes: RouteSet = set()
            if want:
                routes = {(str(n), "unicast") for n in config.routes}
                if config.exit_lan_access and any(n.prefixlen == 0 for n in config.routes):
                    for lan in _lan_prefixes(ipr, idx):
                        routes.add((str(lan), "throw"))
            self._sync_routes(ipr, idx, routes)
            self._sync_rules(ipr, bool(want))
        self._sync_netfilter(config if want else Config())

    def _sync_routes(self, ipr: IPRoute, idx: int, want: RouteSet) -> None:
        # The kernel drops device routes with the last address: check what is really there.
        have = self._table_routes(ipr)
        for dst, kind in sorted(have - want):
            with contextlib.suppress(NetlinkError):
                ipr.route("del", dst=dst, table=TABLE, type=kind)
        for dst, kind in sorted(want - have):
            try:
                if kind == "throw":
                    ipr.route("replace", dst=dst, table=TABLE, type="throw")
                else:
                    ipr.route("replace", dst=dst, oif=idx, table=TABLE)
            except NetlinkError as exc:
                # A namespace without IPv6 cannot take the v6 routes; v4 still works.
                log.warning("route %s (%s) via %s: %s", dst, kind, self.ifname, exc)
        self._routes = want

    @staticmethod
    def _table_routes(ipr: IPRoute) -> RouteSet:
        out: RouteSet = set()
        for family in (socket.AF_INET, socket.AF_INET6):
            try:
                found = ipr.get_routes(family=family, table=TABLE)
            except NetlinkError:
                continue
            for r in found:
                if r.get_attr("RTA_TABLE") != TABLE:
                    continue
                dst = r.get_attr("RTA_DST") or ("0.0.0.0" if family == socket.AF_INET else "::")
                kind = "throw" if r["type"] == RTN_THROW else "unicast"
                out.add((str(ipaddress.ip_network(f"{dst}/{r['dst_len']}")), kind))
        return out

    def _sync_rules(self, ipr: IPRoute, want: bool) -> None:
        """tailscale's base rules (§5.7): our own marked sockets never see TABLE."""
        if want == self._rules:
            return
        for family in (socket.AF_INET, socket.AF_INET6):
            for prio, kw in RULES:
                with contextlib.suppress(NetlinkError):  # absent / already there
                    ipr.rule("del", priority=prio, family=family, **kw)
                if want:
                    try:
                        ipr.rule("add", priority=prio, family=family, **kw)
                    except NetlinkError as exc:
                        log.warning("ip rule %d (family %d): %s", prio, family, exc)
        self._rules = want

    def _sync_netfilter(self, config: Config) -> None:
        text = ruleset(self.ifname, config.snat) if config.subnet_routes else None
        if text == self._nft:
            return
        if self._netfilter is None:
            self._netfilter = Netfilter()
        self._netfilter.run(text if text is not None else teardown())
        self._nft = text

    @staticmethod
    def lan_prefixes(exclude: str) -> list[IPNetwork]:
        """The directly attached prefixes of the other interfaces (the LAN)."""

        def run() -> list[IPNetwork]:
            with IPRoute() as ipr:
                found = ipr.link_lookup(ifname=exclude)
                return _lan_prefixes(ipr, int(found[0]) if found else -1)

        return _off_loop(run)

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


def _lan_prefixes(ipr: IPRoute, tun_index: int) -> list[IPNetwork]:
    out: set[IPNetwork] = set()
    for a in ipr.get_addr():
        if int(a["index"]) == tun_index:
            continue
        text = a.get_attr("IFA_ADDRESS")
        if not text:
            continue
        net = ipaddress.ip_interface(f"{text}/{a['prefixlen']}").network
        if net.is_loopback or net.is_link_local or net.prefixlen == 0:
            continue
        out.add(net)
    return sorted(out, key=lambda n: (n.version, int(n.network_address), n.prefixlen))


def ip_forwarding_warning(v6: bool, proc: str = "/proc/sys/net") -> str | None:
    """None when the kernel forwards IPv4 (and, with ``v6``, IPv6); else what to fix.
    tailscaled only warns too (net/netutil CheckIPForwarding)."""
    checks = [("ipv4/ip_forward", "net.ipv4.ip_forward")]
    if v6:
        checks.append(("ipv6/conf/all/forwarding", "net.ipv6.conf.all.forwarding"))
    off = []
    for path, name in checks:
        try:
            with open(f"{proc}/{path}") as f:
                if f.read().strip() != "1":
                    off.append(name)
        except OSError:
            off.append(name)
    if not off:
        return None
    return (
        "IP forwarding is off (" + ", ".join(f"{n}=0" for n in off) + "); advertised "
        "routes will not work: sysctl -w " + " ".join(f"{n}=1" for n in off)
    )
