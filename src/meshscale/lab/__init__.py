"""meshscale.lab: real network namespaces, NAT routers and a process runner for tests."""

from meshscale.lab.lab import Host, Lab, Router
from meshscale.lab.nat import NatKind
from meshscale.lab.netns import LabError
from meshscale.lab.owner import cleanup_stale
from meshscale.lab.pki import LabCA
from meshscale.lab.proc import Proc

__all__ = ["Host", "Lab", "LabCA", "LabError", "NatKind", "Proc", "Router", "cleanup_stale"]
