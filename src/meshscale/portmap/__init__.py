"""Port mapping: NAT-PMP (RFC 6886), PCP (RFC 6887) and UPnP IGD messages. Performs no I/O."""

from . import natpmp, pcp, upnp
from .errors import ParseError

__all__ = ["ParseError", "natpmp", "pcp", "upnp"]
