"""meshscale.testing: FakeClock, the in-memory SimNet, and magicsock nodes driven on it."""

from meshscale.testing.clock import FakeClock
from meshscale.testing.magicsim import Received, SimControl, SimNode, add_node, derp_map_for
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
    "add_node",
    "derp_map_for",
    "lossy",
]
