"""WireGuard protocol core (sans-IO): handshake, cookies, sessions, timers, cryptokey routing."""

from .allowedips import AllowedIPs
from .device import (
    Device,
    DeviceError,
    EndpointChanged,
    Event,
    HandshakeCompleted,
    LocalDeviceError,
)
from .messages import ParseError
from .peer import Endpoint, Keypair, Peer

__all__ = [
    "AllowedIPs",
    "Device",
    "DeviceError",
    "Endpoint",
    "EndpointChanged",
    "Event",
    "HandshakeCompleted",
    "Keypair",
    "LocalDeviceError",
    "ParseError",
    "Peer",
]
