"""meshscale.testing: FakeClock, the in-memory SimNet, and magicsock nodes driven on it."""

from meshscale.testing.clock import FakeClock
from meshscale.testing.magicsock import Received, SimControl, SimNode, derp_map_for
from meshscale.testing.simnet import (
    NAT,
    Host,
    NATType,
    Packet,
    Relay,
    RoutingHook,
    SimNet,
    SimSocket,
    SimStepLimit,
    lossy,
)

__all__ = [
    "NAT",
    "FakeClock",
    "Host",
    "NATType",
    "Packet",
    "Received",
    "Relay",
    "RoutingHook",
    "SimControl",
    "SimNet",
    "SimNode",
    "SimSocket",
    "SimStepLimit",
    "derp_map_for",
    "lossy",
]
