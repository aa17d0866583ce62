"""meshscale.io: the I/O layer under the sans-IO cores (TUN, UDP, timers; HTTP/1.1 on h11: the
server in io.http, the one client in io.httpclient, the raw stream after an upgrade in io.stream).

Data-plane I/O is batched and blocking, for dedicated threads: `TunDevice.read_batch` /
`write_batch` and `UDPSocket.recv_batch` / `send_batch`. `LoopTimer` / `ThreadTimer` keep
one timer at a core's next deadline.

The names below are imported on first use (PEP 562): a program that wants only
``meshscale.io.httpclient`` (the CLIs) does not load the TUN and UDP drivers behind them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from meshscale.lazy import lazy_names

if TYPE_CHECKING:
    from .timer import POKE_INTERVAL, LoopTimer, ThreadTimer
    from .tun import TunClosedError, TunDevice, TunError, TunGoneError, TunStats
    from .udp import Address, UDPClosedError, UDPSocket, UDPStats

_HOME = {
    "POKE_INTERVAL": "timer",
    "LoopTimer": "timer",
    "ThreadTimer": "timer",
    "TunClosedError": "tun",
    "TunDevice": "tun",
    "TunError": "tun",
    "TunGoneError": "tun",
    "TunStats": "tun",
    "Address": "udp",
    "UDPClosedError": "udp",
    "UDPSocket": "udp",
    "UDPStats": "udp",
}

__getattr__ = lazy_names(__name__, _HOME, globals())


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
