"""DERPMap, DERPRegion, DERPNode (tailscale tailcfg/derpmap.go; docs/protocol/control.md §6.1).

``Regions`` is keyed by the region ID (a decimal string on the wire), and each key must
equal its region's RegionID; ``validate`` checks that and that every region has a node.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar


@dataclass(slots=True)
class DERPNode:
    Name: str = ""
    RegionID: int = 0
    HostName: str = ""
    CertName: str = ""
    IPv4: str = ""
    IPv6: str = ""
    STUNPort: int = 0
    STUNOnly: bool = False
    DERPPort: int = 0
    InsecureForTests: bool = False
    STUNTestIP: str = ""
    CanPort80: bool = False

    OMIT: ClassVar[frozenset[str]] = frozenset(
        {
            "CertName", "IPv4", "IPv6", "STUNPort", "STUNOnly", "DERPPort",
            "InsecureForTests", "STUNTestIP", "CanPort80",
        }
    )  # fmt: skip


@dataclass(slots=True)
class DERPRegion:
    RegionID: int = 0
    RegionCode: str = ""
    RegionName: str = ""
    Latitude: float = 0.0
    Longitude: float = 0.0
    Avoid: bool = False
    NoMeasureNoHome: bool = False
    Nodes: list[DERPNode] = field(default_factory=list)

    OMIT: ClassVar[frozenset[str]] = frozenset(
        {"Latitude", "Longitude", "Avoid", "NoMeasureNoHome"}
    )


@dataclass(slots=True)
class DERPHomeParams:
    RegionScore: dict[int, float] = field(default_factory=dict)

    OMIT: ClassVar[frozenset[str]] = frozenset({"RegionScore"})


@dataclass(slots=True)
class DERPMap:
    HomeParams: DERPHomeParams | None = None
    Regions: dict[int, DERPRegion] = field(default_factory=dict)
    OmitDefaultRegions: bool = False

    OMIT: ClassVar[frozenset[str]] = frozenset({"HomeParams", "OmitDefaultRegions"})
    JSON_NAMES: ClassVar[dict[str, str]] = {"OmitDefaultRegions": "omitDefaultRegions"}

    def validate(self) -> None:
        """Raise ValueError on maps that crash clients (tailscale #13728, #14752, #17564)."""
        for rid, region in self.Regions.items():
            if region is None:
                raise ValueError(f"region {rid} is null")
            if region.RegionID != rid:
                raise ValueError(f"region key {rid} != RegionID {region.RegionID}")
            if not region.Nodes:
                raise ValueError(f"region {rid} has no nodes")
