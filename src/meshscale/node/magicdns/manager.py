"""MagicDNS for the backend: netmap -> resolver table, quad-100 on the TUN, the OS's DNS.

    dns = MagicDNS(statedir, ifname, loop, inject=engine.inject)
    engine.intercept = dns.quad100.intercept
    dns.recover()                                 # at start: undo a crashed run
    dns.set_netmap(nm.dns, self_node, peers, accept_dns=True)
    dns.clear()                                   # down / logout: original DNS back
    await dns.close()                             # clean exit: same

Quad-100 answers whenever meshscaled runs (hosts always, as tailscaled; forwarding to the
OS's own nameservers when nothing else is configured). With --accept-dns the OS is pointed
at quad-100 (`osconfig`); without it the system is left alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype

from meshscale.dns.cache import AnswerCache
from meshscale.dns.config import QUAD100_V4, QUAD100_V6, ResolverConfig, from_netmap
from meshscale.dns.resolver import Resolver
from meshscale.tailcfg.dns import DNSConfig
from meshscale.tailcfg.node import Node

from . import osconfig
from .forward import Forwarder
from .server import Quad100

log = logging.getLogger("meshscale.magicdns")

CAP_IPV4_ONLY = "force-register-magicdns-ipv4-only"
WATCH_INTERVAL = 1.0  # seconds between checks that our resolv.conf is still in place
TRAMPLE_LIMIT = 10  # re-applies within TRAMPLE_WINDOW before giving up (tailscaled: 10 / 5 s)
TRAMPLE_WINDOW = 5.0
QUAD100_ADDRS = (str(QUAD100_V4), str(QUAD100_V6))


def os_nameservers(self_node: Node | None) -> list[str]:
    """What the OS is told to use: both quad-100 addresses; only the IPv4 one with the
    force-register cap; only the IPv6 one for an IPv6-only node."""
    if self_node is not None:
        if CAP_IPV4_ONLY in self_node.CapMap:
            return [QUAD100_ADDRS[0]]
        fams = {":" in a for a in self_node.Addresses}
        if fams == {True}:
            return [QUAD100_ADDRS[1]]
    return list(QUAD100_ADDRS)


class MagicDNS:
    def __init__(
        self,
        statedir: Path,
        ifname: str,
        loop: asyncio.AbstractEventLoop,
        *,
        inject: Callable[[list[bytes]], object],
        resolv_conf: Path = osconfig.RESOLV_CONF,
    ) -> None:
        self.resolver = Resolver(cache=AnswerCache(clock=time.monotonic))
        self.forwarder = Forwarder(self.resolver)
        self.quad100 = Quad100(self.forwarder, inject, loop)
        self.os = osconfig.choose(statedir, ifname, resolv_conf)
        self.loop = loop
        self.dns = DNSConfig()
        self.accept_dns = False
        self.health: list[str] = []
        self._os_config: tuple[tuple[str, ...], tuple[str, ...]] | None = None
        self._tramples: list[float] = []
        self._watch: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.quad100.start()
        self._watch = self.loop.create_task(self._watch_file())

    def recover(self) -> None:
        try:
            if self.os.recover():
                log.warning("DNS: restored %s left behind by an earlier run", self.os.path)
        except OSError as exc:
            log.error("DNS: could not restore %s: %s", self.os.path, exc)

    def set_netmap(self, cfg: DNSConfig | None, self_node: Node | None, peers: Iterable[Node],
                   *, accept_dns: bool, exit_node: bool = False) -> None:  # fmt: skip
        self.dns = cfg if cfg is not None else DNSConfig()
        self.accept_dns = accept_dns
        original = self.os.original()
        os_resolvers = [ns for ns in original.nameservers if ns not in QUAD100_ADDRS]
        if accept_dns:
            rc = from_netmap(self.dns, self_node, peers, os_resolvers=os_resolvers,
                             exit_node=exit_node)  # fmt: skip
        else:
            # tailscaled: hosts always, nothing else from control; we forward the rest to
            # the system's own nameservers, which the system still uses directly anyway.
            rc = from_netmap(DNSConfig(ExtraRecords=self.dns.ExtraRecords), self_node, peers,
                             os_resolvers=os_resolvers)  # fmt: skip
        self.resolver.set_config(rc)
        if accept_dns:
            self._apply_os(tuple(os_nameservers(self_node)), tuple(rc.search), rc)
        else:
            self._restore_os()

    def clear(self) -> None:
        """Down or logged out: quad-100 knows nothing, the system's DNS is its own again."""
        self.dns = DNSConfig()
        self.resolver.set_config(ResolverConfig())
        self._restore_os()

    async def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        await self.quad100.close()
        self._restore_os()

    # ---- OS ----

    def _apply_os(self, ns: tuple[str, ...], search: tuple[str, ...], rc: ResolverConfig) -> None:
        if self._os_config == (ns, search) and not self.os.trampled():
            return
        try:
            if isinstance(self.os, osconfig.ResolvedManager):
                local = [r for r in rc.routes if r != "."]
                self.os.set(ns, search, routes=local, default_route=bool(self.dns.Resolvers))
            else:
                self.os.set(ns, search)
        except OSError as exc:
            self.health = [f"dns: configuring the system resolver: {exc}"]
            log.error("DNS: configuring the system resolver failed: %s", exc)
            return
        self._os_config = (ns, search)
        self.health = []

    def _restore_os(self) -> None:
        self._os_config = None
        try:
            self.os.restore()
        except OSError as exc:
            log.error("DNS: restoring %s failed: %s", self.os.path, exc)

    async def _watch_file(self) -> None:
        while True:
            await asyncio.sleep(WATCH_INTERVAL)
            if self._os_config is None or not self.os.trampled():
                continue
            now = time.monotonic()
            self._tramples = [t for t in self._tramples if now - t < TRAMPLE_WINDOW]
            if len(self._tramples) >= TRAMPLE_LIMIT:
                if "resolv-conf-overwritten" not in " ".join(self.health):
                    log.error("DNS: %s keeps being overwritten; giving up", self.os.path)
                    self.health = ["dns: resolv-conf-overwritten: someone else keeps "
                                   f"rewriting {self.os.path}"]  # fmt: skip
                continue
            self._tramples.append(now)
            log.warning("DNS: %s was overwritten by someone else; re-applying", self.os.path)
            ns, search = self._os_config
            self._os_config = None
            self._apply_os(ns, search, self.resolver.config)

    # ---- LocalAPI ----

    def status(self) -> dict[str, Any]:
        cfg = self.resolver.config
        return {
            "AcceptDNS": self.accept_dns,
            "MagicDNS": self.dns.Proxied,
            "Resolvers": [r.Addr for r in self.dns.Resolvers],
            "FallbackResolvers": [r.Addr for r in self.dns.FallbackResolvers],
            "DefaultResolvers": list(cfg.fallback),
            "SplitDNSRoutes": {k: v for k, v in sorted(cfg.routes.items()) if v},
            "LocalZones": sorted(k for k, v in cfg.routes.items() if not v),
            "SearchDomains": sorted(cfg.search),
            "CertDomains": list(self.dns.CertDomains),
            "ExtraRecords": [
                {"Name": r.Name, "Type": r.Type, "Value": r.Value} for r in self.dns.ExtraRecords
            ],
            "OSConfig": {
                "Mode": self.os.mode,
                "Active": self.os.active,
                "Path": str(self.os.path),
            },
            "Stats": dict(self.resolver.stats),
            "Health": list(self.health),
        }

    async def query(self, name: str, rdtype: str) -> dict[str, Any]:
        """Ask quad-100 as a client would (`meshscale dns query`). A single-label name is
        tried under each search domain first, as the system resolver would."""
        try:
            rtype = dns.rdatatype.from_text(rdtype.upper())
        except Exception as exc:  # bad type from the CLI
            raise ValueError(str(exc)) from exc
        bare = name.rstrip(".")
        names = [name]
        if "." not in bare and not name.endswith("."):
            names = [f"{bare}.{d}." for d in self.resolver.config.search] + [name]
        res: dict[str, Any] = {}
        for candidate in names:
            res = await self._query_one(candidate, rtype)
            if res["Rcode"] == "NOERROR" and res["Answers"]:
                break
        return res

    async def _query_one(self, name: str, rtype: dns.rdatatype.RdataType) -> dict[str, Any]:
        try:
            q = dns.message.make_query(name, rtype)
        except Exception as exc:  # bad name from the CLI
            raise ValueError(str(exc)) from exc
        self.forwarder.last_upstreams = ()
        start = time.monotonic()
        wire = await self.forwarder.query(q.to_wire(), tcp=True)
        took = time.monotonic() - start
        tname = dns.rdatatype.to_text(rtype)
        if wire is None:
            return {"Name": name, "Type": tname, "Rcode": "NOANSWER", "Answers": []}
        msg = dns.message.from_wire(wire)
        return {
            "Name": name, "Type": tname, "Rcode": dns.rcode.to_text(msg.rcode()),
            "Authoritative": bool(msg.flags & dns.flags.AA),
            "Answers": [{"Name": rr.name.to_text(), "TTL": rr.ttl,
                         "Type": dns.rdatatype.to_text(rr.rdtype), "Value": rd.to_text()}
                        for rr in msg.answer for rd in rr],
            "Resolvers": list(self.forwarder.last_upstreams), "Seconds": round(took, 4),
        }  # fmt: skip


__all__ = ["MagicDNS", "os_nameservers"]
