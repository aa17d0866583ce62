"""meshscale.relay: the DERP relay and STUN server programs (see README.md)."""

from .app import derp_node, derp_region, mount_derp
from .server import CLIENT_SOURCE, DERPServer, VerifyClient
from .stun_server import STUNServer
from .verify import URLVerifier

__all__ = [
    "CLIENT_SOURCE",
    "DERPServer",
    "STUNServer",
    "URLVerifier",
    "VerifyClient",
    "derp_node",
    "derp_region",
    "mount_derp",
]
