"""meshscale.wgengine: the data plane (tailscale wgengine, wireguard-go conn).

bind       Bind (the transport seam), BindClosed, RX_BATCH
engine     Engine: a wireguard.Device driven by a TUN device and a Bind (three threads)
udpbind    UDPBind: one UDP socket, the bind of meshscale-wireguard
magicbind  MagicBind: magicsock's multiplexer of UDP, disco, STUN and DERP, the bind of
           meshscaled (import it from its module: it pulls in the DERP client)
router/    Config and the netlink Router: addresses and routes of the TUN interface
"""

from .bind import RX_BATCH, Bind, BindClosed
from .engine import Engine, PacketFilter, Tun
from .udpbind import UDPBind

__all__ = ["RX_BATCH", "Bind", "BindClosed", "Engine", "PacketFilter", "Tun", "UDPBind"]
