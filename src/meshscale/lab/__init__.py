"""meshscale.lab: real network namespaces, NAT routers and a process runner for tests."""

from meshscale.lab.control import ControlServer
from meshscale.lab.lab import Host, Lab, Router
from meshscale.lab.meshnet import MeshLabError, MeshNet, MeshNode
from meshscale.lab.nat import NatKind
from meshscale.lab.netns import LabError
from meshscale.lab.owner import cleanup_stale
from meshscale.lab.pki import LabCA
from meshscale.lab.proc import Proc

__all__ = [
    "ControlServer",
    "Host",
    "Lab",
    "LabCA",
    "LabError",
    "MeshLabError",
    "MeshNet",
    "MeshNode",
    "NatKind",
    "Proc",
    "Router",
    "cleanup_stale",
]
