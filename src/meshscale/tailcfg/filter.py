"""FilterRule and friends: the packet filter sent in MapResponse (docs/protocol/control.md §6.3)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar


@dataclass(slots=True)
class PortRange:
    First: int = 0
    Last: int = 0


PORT_RANGE_ANY = PortRange(0, 65535)


@dataclass(slots=True)
class NetPortRange:
    IP: str = ""
    Bits: int | None = None  # deprecated
    Ports: PortRange = field(default_factory=PortRange)

    OMIT: ClassVar[frozenset[str]] = frozenset({"Bits"})


@dataclass(slots=True)
class CapGrant:
    Dsts: list[str] = field(default_factory=list)
    Caps: list[str] = field(default_factory=list)
    CapMap: dict[str, list[Any]] = field(default_factory=dict)

    OMIT: ClassVar[frozenset[str]] = frozenset({"Caps", "CapMap"})


@dataclass(slots=True)
class FilterRule:
    SrcIPs: list[str] = field(default_factory=list)
    SrcBits: list[int] = field(default_factory=list)
    DstPorts: list[NetPortRange] = field(default_factory=list)
    IPProto: list[int] = field(default_factory=list)
    CapGrant: list[CapGrant] = field(default_factory=list)

    OMIT: ClassVar[frozenset[str]] = frozenset({"SrcBits", "DstPorts", "IPProto", "CapGrant"})
