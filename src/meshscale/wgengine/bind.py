"""The engine's transport seam: where WireGuard's datagrams go (wireguard-go conn.Bind).

Two binds implement it: ``udpbind.UDPBind`` (one UDP socket, for meshscale-wireguard) and
``magicbind.MagicBind`` (magicsock's multiplexer of UDP, disco, STUN and DERP, for
meshscaled). The engine's TX thread calls ``send``; its RX thread blocks in ``receive``.
"""

from __future__ import annotations

from typing import Protocol

from meshscale.wireguard import Endpoint

RX_BATCH = 128  # datagrams per receive batch (wireguard-go conn.IdealBatchSize)


class BindClosed(Exception):
    """The bind was closed (or rebound) while a thread was blocked on it."""


class Bind(Protocol):
    """Where transport datagrams go: a UDP socket, or magicsock's multiplexer."""

    def open(self, port: int) -> int:
        """(Re)bind to port (0 = any); returns the bound port. Raises OSError."""
        ...

    def send(self, ep: Endpoint, messages: list[list[bytes]]) -> None: ...

    def send_one(self, ep: Endpoint, data: bytes) -> None: ...

    def receive(self) -> list[tuple[bytes | memoryview, Endpoint]]:
        """Block for at least one datagram; raises BindClosed when closed or rebound."""
        ...

    def close(self) -> None: ...
