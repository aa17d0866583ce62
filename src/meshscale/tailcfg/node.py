"""Node, PeerChange and the user types (tailscale tailcfg.Node, PeerChange, User, Login,
UserProfile; docs/protocol/control.md §4.4 and 4.5).

IDs are plain ints (Go int64 NodeID/UserID). ``Hostinfo`` on a Node is kept as raw JSON so
that a peer's Hostinfo reaches other clients exactly as it was reported, including fields
this codec does not type.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar, NewType

from meshscale.key import DiscoPublic, MachinePublic, NodePublic

NodeID = NewType("NodeID", int)
UserID = NewType("UserID", int)
StableNodeID = NewType("StableNodeID", str)

# The legacy "DERP" string names a region as a magic IP:port (docs/protocol/control.md §4.5).
DERP_MAGIC_IP = "127.3.3.40"


@dataclass(slots=True)
class User:
    ID: int = 0
    DisplayName: str = ""
    ProfilePicURL: str = ""
    Created: datetime | None = None

    OMIT: ClassVar[frozenset[str]] = frozenset({"ProfilePicURL", "Created"})


@dataclass(slots=True)
class Login:
    ID: int = 0
    Provider: str = ""
    LoginName: str = ""
    DisplayName: str = ""
    ProfilePicURL: str = ""

    OMIT: ClassVar[frozenset[str]] = frozenset({"ProfilePicURL"})


@dataclass(slots=True)
class UserProfile:
    ID: int = 0
    LoginName: str = ""
    DisplayName: str = ""
    ProfilePicURL: str = ""
    Groups: list[str] = field(default_factory=list)

    OMIT: ClassVar[frozenset[str]] = frozenset({"ProfilePicURL", "Groups"})


@dataclass(slots=True)
class Node:
    ID: int = 0
    StableID: str = ""
    Name: str = ""  # MagicDNS FQDN with a trailing dot
    User: int = 0
    Sharer: int = 0
    Key: NodePublic | None = None
    KeyExpiry: datetime | None = None  # None: never expires
    KeySignature: bytes = b""
    Machine: MachinePublic | None = None
    DiscoKey: DiscoPublic | None = None
    Addresses: list[str] = field(default_factory=list)
    AllowedIPs: list[str] | None = None
    Endpoints: list[str] = field(default_factory=list)
    LegacyDERPString: str = ""
    HomeDERP: int = 0
    Hostinfo: Any = None  # raw Hostinfo JSON object
    Created: datetime | None = None
    Cap: int = 0
    Tags: list[str] = field(default_factory=list)
    PrimaryRoutes: list[str] = field(default_factory=list)
    LastSeen: datetime | None = None
    Online: bool | None = None
    MachineAuthorized: bool = False
    Capabilities: list[str] = field(default_factory=list)
    CapMap: dict[str, list[Any] | None] = field(default_factory=dict)
    UnsignedPeerAPIOnly: bool = False
    ComputedName: str = ""
    ComputedNameWithHost: str = ""
    DataPlaneAuditLogID: str = ""
    Expired: bool = False
    SelfNodeV4MasqAddrForThisPeer: str | None = None
    SelfNodeV6MasqAddrForThisPeer: str | None = None
    IsWireGuardOnly: bool = False
    IsJailed: bool = False
    ExitNodeDNSResolvers: list[Any] = field(default_factory=list)

    JSON_NAMES: ClassVar[dict[str, str]] = {"LegacyDERPString": "DERP"}
    OMIT: ClassVar[frozenset[str]] = frozenset(
        {
            "Sharer", "KeyExpiry", "KeySignature", "Machine", "DiscoKey", "AllowedIPs",
            "Endpoints", "LegacyDERPString", "HomeDERP", "Hostinfo", "Created", "Cap", "Tags",
            "PrimaryRoutes", "LastSeen", "Online", "MachineAuthorized", "Capabilities",
            "CapMap", "UnsignedPeerAPIOnly", "ComputedName", "ComputedNameWithHost",
            "DataPlaneAuditLogID", "Expired", "SelfNodeV4MasqAddrForThisPeer",
            "SelfNodeV6MasqAddrForThisPeer", "IsWireGuardOnly", "IsJailed",
            "ExitNodeDNSResolvers",
        }
    )  # fmt: skip


@dataclass(slots=True)
class PeerChange:
    """A partial update of one peer; absent fields are unchanged. Zero DERPRegion or Cap
    mean unchanged, so they cannot be patched to zero."""

    NodeID: int = 0
    DERPRegion: int = 0
    Cap: int = 0
    CapMap: dict[str, list[Any] | None] = field(default_factory=dict)
    Endpoints: list[str] | None = None
    Key: NodePublic | None = None
    KeySignature: bytes = b""
    DiscoKey: DiscoPublic | None = None
    Online: bool | None = None
    LastSeen: datetime | None = None
    KeyExpiry: datetime | None = None

    OMIT: ClassVar[frozenset[str]] = frozenset(
        {
            "DERPRegion", "Cap", "CapMap", "Endpoints", "Key", "KeySignature", "DiscoKey",
            "Online", "LastSeen", "KeyExpiry",
        }
    )  # fmt: skip
