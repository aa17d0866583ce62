"""Request and response bodies of the ts2021 endpoints (tailscale tailcfg/tailcfg.go).

GET  /key                 -> OverTLSPublicKeyResponse
POST /machine/register    RegisterRequest -> RegisterResponse      (docs/protocol/control.md §3)
POST /machine/map         MapRequest -> stream of MapResponse      (docs/protocol/control.md §4)
early payload             EarlyNoise                               (docs/protocol/control.md §2.6)
POST /machine/set-dns     SetDNSRequest
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar

from meshscale.key import DiscoPublic, MachinePublic, NodePublic

from . import node as _node
from .derpmap import DERPMap
from .dns import DNSConfig
from .filter import FilterRule
from .hostinfo import Hostinfo
from .node import Login, Node, PeerChange, User, UserProfile

# RegisterRequest.Expiry on logout: time.Unix(123, 0) (docs/protocol/control.md §3.6).
LOGOUT_EXPIRY = datetime.fromisoformat("1970-01-01T00:02:03+00:00")


@dataclass(slots=True)
class OverTLSPublicKeyResponse:
    legacyPublicKey: MachinePublic | None = None
    publicKey: MachinePublic | None = None


@dataclass(slots=True)
class EarlyNoise:
    nodeKeyChallenge: str = ""  # "chalpub:<hex>"


@dataclass(slots=True)
class RegisterResponseAuth:
    Oauth2Token: Any = None
    AuthKey: str = ""

    OMIT: ClassVar[frozenset[str]] = frozenset({"Oauth2Token", "AuthKey"})


@dataclass(slots=True)
class RegisterRequest:
    Version: int = 0
    NodeKey: NodePublic | None = None
    OldNodeKey: NodePublic | None = None
    NLKey: str = ""  # "nlpub:<hex>"; tailnet lock is not implemented
    Auth: RegisterResponseAuth | None = None
    Expiry: datetime | None = None
    Followup: str = ""
    Hostinfo: Hostinfo | None = None
    Ephemeral: bool = False
    NodeKeySignature: bytes | None = None
    SignatureType: int = 0
    Timestamp: datetime | None = None
    DeviceCert: bytes = b""
    Signature: bytes = b""
    Tailnet: str = ""

    OMIT: ClassVar[frozenset[str]] = frozenset(
        {"Auth", "Ephemeral", "SignatureType", "Timestamp", "DeviceCert", "Signature", "Tailnet"}
    )


@dataclass(slots=True)
class RegisterResponse:
    User: User = field(default_factory=User)
    Login: Login = field(default_factory=Login)
    NodeKeyExpired: bool = False
    MachineAuthorized: bool = False
    AuthURL: str = ""
    NodeKeySignature: bytes | None = None
    Error: str = ""


@dataclass(slots=True)
class MapRequest:
    Version: int = 0
    Compress: str = ""
    KeepAlive: bool = False
    NodeKey: NodePublic | None = None
    DiscoKey: DiscoPublic | None = None
    Stream: bool = False
    Hostinfo: Hostinfo | None = None
    MapSessionHandle: str = ""
    MapSessionSeq: int = 0
    Endpoints: list[str] = field(default_factory=list)
    EndpointTypes: list[int] = field(default_factory=list)
    TKAHead: str = ""
    ReadOnly: bool = False
    OmitPeers: bool = False
    DebugFlags: list[str] = field(default_factory=list)
    ConnectionHandleForTest: str = ""

    OMIT: ClassVar[frozenset[str]] = frozenset(
        {
            "Compress", "KeepAlive", "Stream", "MapSessionHandle", "MapSessionSeq", "Endpoints",
            "EndpointTypes", "TKAHead", "ReadOnly", "OmitPeers", "DebugFlags",
            "ConnectionHandleForTest",
        }
    )  # fmt: skip


@dataclass(slots=True)
class PingRequest:
    URL: str = ""
    URLIsNoise: bool = False
    Log: bool = False
    Types: str = ""
    IP: str = ""
    Payload: bytes = b""

    OMIT: ClassVar[frozenset[str]] = frozenset({"URLIsNoise", "Log", "Types", "IP", "Payload"})


@dataclass(slots=True)
class Debug:
    SleepSeconds: float = 0.0
    DisableLogTail: bool = False
    Exit: int | None = None

    OMIT: ClassVar[frozenset[str]] = frozenset({"SleepSeconds", "DisableLogTail", "Exit"})


@dataclass(slots=True)
class ClientVersion:
    RunningLatest: bool = False
    LatestVersion: str = ""
    UrgentSecurityUpdate: bool = False
    Notify: bool = False
    NotifyURL: str = ""
    NotifyText: str = ""

    OMIT: ClassVar[frozenset[str]] = frozenset(
        {"RunningLatest", "LatestVersion", "UrgentSecurityUpdate", "Notify", "NotifyURL",
         "NotifyText"}
    )  # fmt: skip


@dataclass(slots=True)
class MapResponse:
    """One message of the map stream. In a delta, an absent field means "unchanged";
    a non-empty ``Peers`` replaces the whole peer set (so "no peers" is PeersRemoved)."""

    MapSessionHandle: str = ""
    Seq: int = 0
    KeepAlive: bool = False
    PingRequest: PingRequest | None = None
    PopBrowserURL: str = ""
    Node: Node | None = None
    DERPMap: DERPMap | None = None
    Peers: list[_node.Node] = field(default_factory=list)
    PeersChanged: list[_node.Node] = field(default_factory=list)
    PeersRemoved: list[int] = field(default_factory=list)
    PeersChangedPatch: list[PeerChange] = field(default_factory=list)
    PeerSeenChange: dict[int, bool] = field(default_factory=dict)
    OnlineChange: dict[int, bool] = field(default_factory=dict)
    DNSConfig: DNSConfig | None = None
    Domain: str = ""
    CollectServices: bool | None = None  # opt.Bool: bare JSON bool
    PacketFilter: list[FilterRule] = field(default_factory=list)
    # A None value deletes that named filter; "*": None clears all first
    # (docs/protocol/control.md §6.3).
    PacketFilters: dict[str, list[FilterRule] | None] = field(default_factory=dict)
    UserProfiles: list[UserProfile] = field(default_factory=list)
    Health: list[str] = field(default_factory=list)
    DisplayMessages: dict[str, Any] = field(default_factory=dict)
    SSHPolicy: Any = None
    ControlTime: datetime | None = None
    TKAInfo: Any = None
    DomainDataPlaneAuditLogID: str = ""
    Debug: Debug | None = None
    ControlDialPlan: Any = None
    ClientVersion: ClientVersion | None = None
    DeprecatedDefaultAutoUpdate: bool | None = None

    JSON_NAMES: ClassVar[dict[str, str]] = {"DeprecatedDefaultAutoUpdate": "DefaultAutoUpdate"}
    OMIT: ClassVar[frozenset[str]] = frozenset(
        {
            "MapSessionHandle", "Seq", "KeepAlive", "PingRequest", "PopBrowserURL", "Node",
            "DERPMap", "Peers", "PeersChanged", "PeersRemoved", "PeersChangedPatch",
            "PeerSeenChange", "OnlineChange", "DNSConfig", "Domain", "CollectServices",
            "PacketFilter", "PacketFilters", "UserProfiles", "Health", "DisplayMessages",
            "SSHPolicy", "ControlTime", "TKAInfo", "DomainDataPlaneAuditLogID", "Debug",
            "ControlDialPlan", "ClientVersion", "DeprecatedDefaultAutoUpdate",
        }
    )  # fmt: skip


@dataclass(slots=True)
class SetDNSRequest:
    Version: int = 0
    NodeKey: NodePublic | None = None
    Name: str = ""
    Type: str = ""
    Value: str = ""
