"""Status types the local API returns and the CLI prints (tailscale ipn/ipnstate).

``Status.to_json`` emits the same JSON keys as ``tailscale status --json``: ``BackendState``,
``Self``, ``Peer`` keyed by node key text, ``TailscaleIPs``, ``User`` keyed by user ID, and per
peer ``HostName``, ``DNSName``, ``CurAddr``, ``Relay``, ``Online``, ``RxBytes``, ``TxBytes``,
``LastHandshake`` and friends. Times are Go RFC 3339 with the zero time for "never".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from meshscale.magicsock.netcheck import Report
from meshscale.tailcfg import format_time

# Backend states, named as upstream's ipn.State.
NO_STATE = "NoState"
NEEDS_LOGIN = "NeedsLogin"
NEEDS_MACHINE_AUTH = "NeedsMachineAuth"
STOPPED = "Stopped"
STARTING = "Starting"
RUNNING = "Running"

# ipnstate.TaildropTargetStatus values we report: meshscale has no Taildrop, so a peer is
# never a target; "missing capability" while running, "not running" otherwise.
TAILDROP_IPN_NOT_RUNNING = 3
TAILDROP_MISSING_CAP = 4

ACTIVE_WINDOW = 120.0  # seconds: a peer with traffic this recent is "active" (status table)


def peerapi_urls(hostinfo: dict[str, Any], ips: list[str]) -> list[str]:
    """PeerStatus.PeerAPIURL: one http URL per tailnet address whose family the node's
    Hostinfo.Services advertises a peer API for (``peerapi4`` / ``peerapi6``)."""
    ports: dict[str, int] = {}
    services = hostinfo.get("Services")
    for svc in services if isinstance(services, list) else []:
        if isinstance(svc, dict) and svc.get("Proto") in ("peerapi4", "peerapi6"):
            port = svc.get("Port")
            if isinstance(port, int) and not isinstance(port, bool) and 0 < port < 65536:
                ports[str(svc["Proto"])] = port
    out = []
    for ip in ips:
        v6 = ":" in ip
        port = ports.get("peerapi6" if v6 else "peerapi4")
        if port:
            out.append(f"http://[{ip}]:{port}" if v6 else f"http://{ip}:{port}")
    return out


@dataclass(slots=True)
class PeerStatus:
    ID: str = ""
    PublicKey: str = ""
    HostName: str = ""
    DNSName: str = ""
    OS: str = ""
    UserID: int = 0
    AltSharerUserID: int = 0  # who shared this node in from another tailnet (omitempty)
    TailscaleIPs: list[str] = field(default_factory=list)
    AllowedIPs: list[str] = field(default_factory=list)
    Addrs: list[str] = field(default_factory=list)
    CurAddr: str = ""
    Relay: str = ""
    RxBytes: int = 0
    TxBytes: int = 0
    Created: datetime | None = None
    LastWrite: datetime | None = None
    LastSeen: datetime | None = None
    LastHandshake: datetime | None = None
    Online: bool = False
    ExitNode: bool = False
    ExitNodeOption: bool = False
    Active: bool = False
    InNetworkMap: bool = False
    InMagicSock: bool = False
    InEngine: bool = False
    KeyExpiry: datetime | None = None
    # Printed always (null/0/"" when unknown), as tailscale does:
    PeerAPIURL: list[str] = field(default_factory=list)
    TaildropTarget: int = TAILDROP_IPN_NOT_RUNNING
    NoFileSharingReason: str = ""
    # Omitted when empty (Go's omitempty):
    Tags: list[str] = field(default_factory=list)
    PrimaryRoutes: list[str] = field(default_factory=list)
    CapMap: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in self.__slots__:
            v = getattr(self, name)
            if name in ("Tags", "PrimaryRoutes", "CapMap", "AltSharerUserID"):
                if v:
                    out[name] = v
            elif name == "PeerAPIURL":
                out[name] = v or None
            elif name in ("Created", "LastWrite", "LastSeen", "LastHandshake"):
                out[name] = format_time(v)
            elif name == "KeyExpiry":
                if v is not None:
                    out[name] = format_time(v)
            elif name in ("Addrs", "AllowedIPs") and not v:
                out[name] = None
            else:
                out[name] = v
        return out


@dataclass(slots=True)
class UserProfile:
    ID: int = 0
    LoginName: str = ""
    DisplayName: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "ID": self.ID,
            "LoginName": self.LoginName,
            "DisplayName": self.DisplayName,
            "ProfilePicURL": "",
        }


@dataclass(slots=True)
class Status:
    Version: str = ""
    TUN: bool = True
    BackendState: str = NO_STATE
    HaveNodeKey: bool = False
    AuthURL: str = ""
    TailscaleIPs: list[str] = field(default_factory=list)
    Self: PeerStatus | None = None
    Health: list[str] = field(default_factory=list)
    MagicDNSSuffix: str = ""
    MagicDNSEnabled: bool = False
    TailnetName: str = ""  # the netmap's Domain (CurrentTailnet.Name)
    Peer: dict[str, PeerStatus] = field(default_factory=dict)
    User: dict[int, UserProfile] = field(default_factory=dict)
    CertDomains: list[str] = field(default_factory=list)  # no HTTPS certificates: null
    # meshscale's own: hard-NAT probe counters (magicsock.hardnat), omitted when not running
    HardNATProbes: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        out = self._tailscale_json()
        if self.HardNATProbes is not None:
            out["HardNATProbes"] = self.HardNATProbes
        return out

    def _tailscale_json(self) -> dict[str, Any]:
        return {
            "Version": self.Version,
            "TUN": self.TUN,
            "BackendState": self.BackendState,
            "HaveNodeKey": self.HaveNodeKey,
            "AuthURL": self.AuthURL,
            "TailscaleIPs": self.TailscaleIPs or None,
            "Self": self.Self.to_json() if self.Self is not None else None,
            "Health": self.Health or None,
            "MagicDNSSuffix": self.MagicDNSSuffix,
            "CurrentTailnet": (
                {"Name": self.TailnetName or self.MagicDNSSuffix,
                 "MagicDNSSuffix": self.MagicDNSSuffix, "MagicDNSEnabled": self.MagicDNSEnabled}
                if self.MagicDNSSuffix else None
            ),
            "Peer": {k: p.to_json() for k, p in self.Peer.items()} or None,
            "User": {str(k): u.to_json() for k, u in self.User.items()} or None,
            "CertDomains": self.CertDomains or None,
            "ClientVersion": None,  # no update check: null, as tailscale without one
        }  # fmt: skip


@dataclass(slots=True)
class PingResult:
    """One disco ping's answer (tailscale ipnstate.PingResult, the fields we fill)."""

    IP: str = ""
    NodeIP: str = ""
    NodeName: str = ""
    Err: str = ""
    LatencySeconds: float = 0.0
    Endpoint: str = ""
    DERPRegionID: int = 0
    DERPRegionCode: str = ""

    def to_json(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}

    @classmethod
    def from_json(cls, obj: Any) -> PingResult:
        out = cls()
        if isinstance(obj, dict):
            for name in cls.__slots__:
                v = obj.get(name)
                if v is not None and isinstance(v, type(getattr(out, name))):
                    setattr(out, name, v)
                elif name == "LatencySeconds" and isinstance(v, int):
                    out.LatencySeconds = float(v)
        return out


def _hostport(a: Any) -> str:
    return f"[{a.ip}]:{a.port}" if a.ip.version == 6 else f"{a.ip}:{a.port}"


def netcheck_json(r: Report | None, have: dict[str, Any], names: dict[str, str],
                  home_derp: int) -> dict[str, Any]:  # fmt: skip
    """The local API's netcheck answer; ``have`` is the port mappers found (UPnP/PMP/PCP),
    empty when not checked."""
    if r is None:
        return {"UDP": False, "RegionNames": names, "PreferredDERP": home_derp, **have}
    return {
        "UDP": r.udp, "IPv4": r.ipv4, "IPv6": r.ipv6,
        "GlobalV4": _hostport(r.global_v4) if r.global_v4 else "",
        "GlobalV6": _hostport(r.global_v6) if r.global_v6 else "",
        "MappingVariesByDestIP": r.mapping_varies_by_dest_ip,
        "PreferredDERP": r.preferred_derp or home_derp,
        "RegionLatency": {str(k): v for k, v in r.region_latency.items()},
        "RegionV4Latency": {str(k): v for k, v in r.region_v4_latency.items()},
        "RegionV6Latency": {str(k): v for k, v in r.region_v6_latency.items()},
        "RegionNames": names,
        **have,
    }  # fmt: skip
