"""Hostinfo and NetInfo: what a client reports about itself (tailscale tailcfg.Hostinfo).

Only fields a server reads are typed; the codec ignores the rest on decode, and the server
keeps the client's raw Hostinfo JSON for passing on to peers (see mapper).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar


@dataclass(slots=True)
class NetInfo:
    MappingVariesByDestIP: bool | None = None  # opt.Bool: bare true/false, omitted if unset
    WorkingIPv6: bool | None = None
    OSHasIPv6: bool | None = None
    WorkingUDP: bool | None = None
    WorkingICMPv4: bool | None = None
    HavePortMap: bool = False
    UPnP: bool | None = None
    PMP: bool | None = None
    PCP: bool | None = None
    PreferredDERP: int = 0
    LinkType: str = ""
    DERPLatency: dict[str, float] = field(default_factory=dict)
    FirewallMode: str = ""

    OMIT: ClassVar[frozenset[str]] = frozenset(
        {
            "MappingVariesByDestIP",
            "WorkingIPv6",
            "OSHasIPv6",
            "WorkingUDP",
            "WorkingICMPv4",
            "HavePortMap",
            "UPnP",
            "PMP",
            "PCP",
            "PreferredDERP",
            "LinkType",
            "DERPLatency",
            "FirewallMode",
        }
    )


@dataclass(slots=True)
class Service:
    Proto: str = ""
    Port: int = 0
    Description: str = ""

    OMIT: ClassVar[frozenset[str]] = frozenset({"Description"})


@dataclass(slots=True)
class Location:
    Country: str = ""
    CountryCode: str = ""
    City: str = ""
    CityCode: str = ""
    Latitude: float = 0.0
    Longitude: float = 0.0
    Priority: int = 0

    OMIT: ClassVar[frozenset[str]] = frozenset(
        {"Country", "CountryCode", "City", "CityCode", "Latitude", "Longitude", "Priority"}
    )


@dataclass(slots=True)
class Hostinfo:
    IPNVersion: str = ""
    FrontendLogID: str = ""
    BackendLogID: str = ""
    OS: str = ""
    OSVersion: str = ""
    Container: bool | None = None
    Env: str = ""
    Distro: str = ""
    DistroVersion: str = ""
    DistroCodeName: str = ""
    App: str = ""
    Desktop: bool | None = None
    Package: str = ""
    DeviceModel: str = ""
    PushDeviceToken: str = ""
    Hostname: str = ""
    ShieldsUp: bool = False
    ShareeNode: bool = False
    NoLogsNoSupport: bool = False
    WireIngress: bool = False
    IngressEnabled: bool = False
    AllowsUpdate: bool = False
    Machine: str = ""
    GoArch: str = ""
    GoArchVar: str = ""
    GoVersion: str = ""
    RoutableIPs: list[str] = field(default_factory=list)
    RequestTags: list[str] = field(default_factory=list)
    WoLMACs: list[str] = field(default_factory=list)
    Services: list[Service] = field(default_factory=list)
    NetInfo: NetInfo | None = None
    SSH_HostKeys: list[str] = field(default_factory=list)
    Cloud: str = ""
    Userspace: bool | None = None
    UserspaceRouter: bool | None = None
    AppConnector: bool | None = None
    ServicesHash: str = ""
    PeerRelay: bool = False
    ExitNodeID: str = ""
    Location: Location | None = None
    TPM: Any = None  # passed through untyped
    StateEncrypted: bool | None = None

    JSON_NAMES: ClassVar[dict[str, str]] = {"SSH_HostKeys": "sshHostKeys"}
    # Every Hostinfo field is omitempty/omitzero upstream.
    OMIT: ClassVar[frozenset[str]] = frozenset(
        {
            "IPNVersion", "FrontendLogID", "BackendLogID", "OS", "OSVersion", "Container", "Env",
            "Distro", "DistroVersion", "DistroCodeName", "App", "Desktop", "Package",
            "DeviceModel", "PushDeviceToken", "Hostname", "ShieldsUp", "ShareeNode",
            "NoLogsNoSupport", "WireIngress", "IngressEnabled", "AllowsUpdate", "Machine",
            "GoArch", "GoArchVar", "GoVersion", "RoutableIPs", "RequestTags", "WoLMACs",
            "Services", "NetInfo", "SSH_HostKeys", "Cloud", "Userspace", "UserspaceRouter",
            "AppConnector", "ServicesHash", "PeerRelay", "ExitNodeID", "Location", "TPM",
            "StateEncrypted",
        }
    )  # fmt: skip
