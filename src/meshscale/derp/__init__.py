"""meshscale.derp: the DERP protocol, sans-IO (frames, login boxes, client session, routing)."""

from .client import ClientEvent, ClientSession, ClientState, Connected
from .errors import (
    AdmissionError,
    DERPError,
    FrameError,
    HandshakeError,
    LocalDERPError,
    ParseError,
    RemoteDERPError,
)
from .frames import MAX_PACKET_SIZE, PROTOCOL_VERSION, FrameBuffer, FrameType, PeerGoneReason
from .info import ClientInfo, ServerInfo
from .relay import Conn, Forwarder, Relay, RelayStats, SendQueue

__all__ = [
    "MAX_PACKET_SIZE",
    "PROTOCOL_VERSION",
    "AdmissionError",
    "ClientEvent",
    "ClientInfo",
    "ClientSession",
    "ClientState",
    "Conn",
    "Connected",
    "DERPError",
    "Forwarder",
    "FrameBuffer",
    "FrameError",
    "FrameType",
    "HandshakeError",
    "LocalDERPError",
    "ParseError",
    "PeerGoneReason",
    "Relay",
    "RelayStats",
    "RemoteDERPError",
    "SendQueue",
    "ServerInfo",
]
