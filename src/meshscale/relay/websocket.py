"""DERP over WebSocket (docs/protocol/derp-disco-stun.md §1.3), the relay's side: recognise and
accept the upgrade. The stream itself (``WebSocketStream``) and the client's side are in
``meshscale.derphttp.websocket``.
"""

from __future__ import annotations

from wsproto.connection import ConnectionType
from wsproto.utilities import generate_accept_token

from ..derphttp.websocket import SUBPROTOCOL, WebSocketStream
from ..io.http import Request, UpgradeStream


def wants_derp_websocket(req: Request) -> bool:
    """Upgrade: websocket with ``derp`` among the offered subprotocols (1.3)."""
    if (req.headers.get("upgrade") or "").lower() != "websocket":
        return False
    offered = ",".join(req.headers.get_all("sec-websocket-protocol"))
    return SUBPROTOCOL in [p.strip() for p in offered.split(",")]


async def accept_websocket(req: Request, stream: UpgradeStream) -> WebSocketStream:
    """Write the WebSocket 101 (subprotocol derp, no compression) and wrap the stream."""
    key = req.headers.get("sec-websocket-key") or ""
    await stream.accept(
        [
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Accept", generate_accept_token(key.encode()).decode()),
            ("Sec-WebSocket-Protocol", SUBPROTOCOL),
        ]
    )
    return WebSocketStream(stream, ConnectionType.SERVER)
