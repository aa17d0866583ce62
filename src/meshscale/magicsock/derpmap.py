"""The parts of a DERPMap that NAT traversal needs (docs/protocol/derp-disco-stun.md §2.1), frozen.

Built from control's ``meshscale.tailcfg.DERPMap`` with ``from_tailcfg`` (or from its
JSON form with ``from_json``); frozen so that a Conn can compare maps and hold one
without copying. Region 0 means "no region" everywhere in magicsock. The ``Frozen`` prefix
keeps these apart from the wire types ``tailcfg.DERPMap``/``DERPRegion``/``DERPNode``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from meshscale import tailcfg

DEFAULT_STUN_PORT = 3478  # docs/protocol/derp-disco-stun.md §2.1: STUNPort 0 means 3478
# docs/protocol/derp-disco-stun.md §8: the port is a region ID
DERP_MAGIC_IP = ipaddress.IPv4Address("127.3.3.40")


@dataclass(frozen=True, slots=True)
class FrozenDERPNode:
    name: str
    region_id: int
    host_name: str = ""
    ipv4: str = ""  # "" = resolve host_name (not done here), "none" = disabled
    ipv6: str = ""
    stun_port: int = 0  # 0 = 3478, -1 = STUN disabled
    stun_only: bool = False
    derp_port: int = 0
    stun_test_ip: str = ""

    def stun_ip(self, family: int) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        """The literal IP to STUN for ``family`` (4 or 6), or None if there is none."""
        if self.stun_port < 0:
            return None
        for text in (self.stun_test_ip, self.ipv4 if family == 4 else self.ipv6):
            if not text:
                continue
            try:
                ip = ipaddress.ip_address(text)
            except ValueError:
                return None  # "none" or junk disables this family
            return ip if ip.version == family else None
        return None

    def stun_port_or_default(self) -> int:
        return self.stun_port or DEFAULT_STUN_PORT


@dataclass(frozen=True, slots=True)
class FrozenDERPRegion:
    region_id: int
    region_code: str = ""
    region_name: str = ""
    nodes: tuple[FrozenDERPNode, ...] = ()
    avoid: bool = False
    no_measure_no_home: bool = False


@dataclass(frozen=True, slots=True)
class FrozenDERPMap:
    regions: Mapping[int, FrozenDERPRegion] = field(default_factory=dict)
    region_score: Mapping[int, float] = field(default_factory=dict)  # HomeParams.RegionScore

    @classmethod
    def from_tailcfg(cls, m: tailcfg.DERPMap) -> FrozenDERPMap:
        """Convert control's DERPMap (null regions are skipped,
        docs/protocol/derp-disco-stun.md §2.2)."""
        regions = {
            rid: FrozenDERPRegion(
                region_id=rid,
                region_code=r.RegionCode,
                region_name=r.RegionName,
                nodes=tuple(
                    FrozenDERPNode(
                        name=n.Name,
                        region_id=n.RegionID or rid,
                        host_name=n.HostName,
                        ipv4=n.IPv4,
                        ipv6=n.IPv6,
                        stun_port=n.STUNPort,
                        stun_only=n.STUNOnly,
                        derp_port=n.DERPPort,
                        stun_test_ip=n.STUNTestIP,
                    )
                    for n in r.Nodes
                ),
                avoid=r.Avoid,
                no_measure_no_home=r.NoMeasureNoHome,
            )
            for rid, r in m.Regions.items()
            if r is not None
        }
        scores = dict(m.HomeParams.RegionScore) if m.HomeParams is not None else {}
        return cls(regions, scores)

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> FrozenDERPMap:
        """Read tailcfg.DERPMap JSON (already decoded). Raises ValueError on bad shapes."""
        try:
            regions: dict[int, FrozenDERPRegion] = {}
            for rid_text, r in (obj.get("Regions") or {}).items():
                if r is None:
                    continue  # docs/protocol/derp-disco-stun.md §2.2: null entries are deletions
                rid = int(rid_text)
                nodes = tuple(
                    FrozenDERPNode(
                        name=str(n["Name"]),
                        region_id=int(n.get("RegionID", rid)),
                        host_name=str(n.get("HostName", "")),
                        ipv4=str(n.get("IPv4", "")),
                        ipv6=str(n.get("IPv6", "")),
                        stun_port=int(n.get("STUNPort", 0)),
                        stun_only=bool(n.get("STUNOnly", False)),
                        derp_port=int(n.get("DERPPort", 0)),
                        stun_test_ip=str(n.get("STUNTestIP", "")),
                    )
                    for n in (r.get("Nodes") or [])
                )
                regions[rid] = FrozenDERPRegion(
                    region_id=rid,
                    region_code=str(r.get("RegionCode", "")),
                    region_name=str(r.get("RegionName", "")),
                    nodes=nodes,
                    avoid=bool(r.get("Avoid", False)),
                    no_measure_no_home=bool(r.get("NoMeasureNoHome", False)),
                )
            hp = obj.get("HomeParams") or {}
            scores = {int(k): float(v) for k, v in (hp.get("RegionScore") or {}).items()}
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"bad DERPMap JSON: {exc}") from exc
        return cls(regions, scores)
