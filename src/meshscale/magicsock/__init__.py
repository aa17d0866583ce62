"""meshscale.magicsock: NAT traversal cores (path choice, disco schedule, netcheck)."""

from meshscale.magicsock.conn import (
    Conn,
    ConnStats,
    PeerConfig,
    PeerStatus,
    WireGuardSource,
    looks_like_stun,
)
from meshscale.magicsock.derpmap import (
    DERP_MAGIC_IP,
    FrozenDERPMap,
    FrozenDERPNode,
    FrozenDERPRegion,
)
from meshscale.magicsock.endpoint import PeerEndpoint, better_addr
from meshscale.magicsock.events import (
    AdvertisedEndpoint,
    EndpointsChanged,
    EndpointType,
    Event,
    HomeDERPChanged,
    NetcheckReportReady,
    PeerPathChanged,
    PingResult,
)
from meshscale.magicsock.netcheck import (
    Netcheck,
    Report,
    STUNCodec,
    TailscaleSTUN,
    choose_preferred_derp,
    net_info,
)

__all__ = [
    "DERP_MAGIC_IP",
    "AdvertisedEndpoint",
    "Conn",
    "ConnStats",
    "EndpointType",
    "EndpointsChanged",
    "Event",
    "FrozenDERPMap",
    "FrozenDERPNode",
    "FrozenDERPRegion",
    "HomeDERPChanged",
    "Netcheck",
    "NetcheckReportReady",
    "PeerConfig",
    "PeerEndpoint",
    "PeerPathChanged",
    "PeerStatus",
    "PingResult",
    "Report",
    "STUNCodec",
    "TailscaleSTUN",
    "WireGuardSource",
    "better_addr",
    "choose_preferred_derp",
    "looks_like_stun",
    "net_info",
]
