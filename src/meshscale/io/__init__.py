"""meshscale.io: the I/O layer under the sans-IO cores (TUN, UDP, timers; HTTP/1.1 on h11: the
server in io.http, the one client in io.httpclient, the raw stream after an upgrade in io.stream).

Data-plane I/O is batched and blocking, for dedicated threads: `TunDevice.read_batch` /
`write_batch` and `UDPSocket.recv_batch` / `send_batch`. `LoopTimer` / `ThreadTimer` keep
one timer at a core's next deadline.
"""

from .timer import POKE_INTERVAL, LoopTimer, ThreadTimer
from .tun import TunClosedError, TunDevice, TunError, TunGoneError, TunStats
from .udp import Address, UDPClosedError, UDPSocket, UDPStats

__all__ = [
    "POKE_INTERVAL",
    "Address",
    "LoopTimer",
    "ThreadTimer",
    "TunClosedError",
    "TunDevice",
    "TunError",
    "TunGoneError",
    "TunStats",
    "UDPClosedError",
    "UDPSocket",
    "UDPStats",
]
