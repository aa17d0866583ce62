"""meshscale.derphttp: the DERP client over HTTP and WebSocket (tailscale derp/derphttp).

``DERPClient`` is one connection (dial, upgrade with io.httpclient, login, frames through the
sans-IO meshscale.derp session); ``RegionClient`` keeps one region up with back-off and
``DERPRegions`` switches the home region. The relay's side is meshscale.relay.
"""

from .client import DERPClient
from .regions import BACKOFF_MAX, DERPRegions, RegionClient, backoff_delay
from .websocket import WebSocketStream

__all__ = [
    "BACKOFF_MAX",
    "DERPClient",
    "DERPRegions",
    "RegionClient",
    "WebSocketStream",
    "backoff_delay",
]
