"""meshscale.wgengine: the data plane (tailscale wgengine, wireguard-go conn).

bind       Bind (the transport seam), BindClosed, RX_BATCH
engine     Engine: a wireguard.Device driven by a TUN device and a Bind (three threads)
udpbind    UDPBind: one UDP socket, the bind of meshscale-wireguard
magicbind  MagicBind: magicsock's multiplexer of UDP, disco, STUN and DERP, the bind of
           meshscaled (import it from its module: it pulls in the DERP client)
router/    Config and the netlink Router: addresses and routes of the TUN interface
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from meshscale.lazy import lazy_names

if TYPE_CHECKING:
    from .bind import RX_BATCH, Bind, BindClosed
    from .engine import Engine, PacketFilter, Tun
    from .udpbind import UDPBind

# Imported on first use (PEP 562): router.routes (the CLI's) needs no WireGuard device.
_HOME = {
    "RX_BATCH": "bind",
    "Bind": "bind",
    "BindClosed": "bind",
    "Engine": "engine",
    "PacketFilter": "engine",
    "Tun": "engine",
    "UDPBind": "udpbind",
}

__getattr__ = lazy_names(__name__, _HOME, globals())


__all__ = ["RX_BATCH", "Bind", "BindClosed", "Engine", "PacketFilter", "Tun", "UDPBind"]
