"""Events the magicsock Conn reports to its driver (a closed union: ``match`` on it)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from meshscale.disco import AddrPort
from meshscale.key import NodePublic
from meshscale.magicsock.netcheck import Report


class EndpointType(IntEnum):
    """tailcfg.EndpointType values sent in MapRequest.EndpointTypes
    (docs/protocol/derp-disco-stun.md §5.1)."""

    UNKNOWN = 0
    LOCAL = 1
    STUN = 2
    PORTMAPPED = 3
    STUN4_LOCAL_PORT = 4
    EXPLICIT_CONF = 5


@dataclass(frozen=True, slots=True)
class AdvertisedEndpoint:
    addr: AddrPort
    type: EndpointType


@dataclass(frozen=True, slots=True)
class EndpointsChanged:
    """Our advertised endpoints changed: send them to control (MapRequest.Endpoints)."""

    endpoints: tuple[AdvertisedEndpoint, ...]


@dataclass(frozen=True, slots=True)
class HomeDERPChanged:
    """Our home region changed: connect to it, NotePreferred(1) there, report to control."""

    region: int
    previous: int


@dataclass(frozen=True, slots=True)
class NetcheckReportReady:
    """A netcheck report finished (feeds NetInfo in the MapRequest)."""

    report: Report


@dataclass(frozen=True, slots=True)
class PeerPathChanged:
    """The direct path to a peer changed; ``addr`` None means DERP only."""

    peer: NodePublic
    addr: AddrPort | None
    latency: float | None


@dataclass(frozen=True, slots=True)
class PingResult:
    """Answer to ``Conn.ping``: ``latency`` None means no Pong within 5 s.

    ``addr`` is the UDP address that answered; ``region`` the DERP region if the
    answer came via DERP (then ``addr`` is None).
    """

    peer: NodePublic
    ping_id: bytes
    latency: float | None
    addr: AddrPort | None
    region: int


Event = EndpointsChanged | HomeDERPChanged | NetcheckReportReady | PeerPathChanged | PingResult
