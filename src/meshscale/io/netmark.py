"""The process-wide socket mark (tailscale net/netns): SO_MARK on every socket we dial.

meshscaled calls ``set_socket_mark(0x80000)`` at start; from then on ``UDPSocket.bind``
and ``httpclient.connect`` mark their sockets, and the node's policy-routing rules
(``wgengine.router``) send marked packets to the main table, never into the tunnel. A mark
that cannot be set (no CAP_NET_ADMIN) is logged once and otherwise ignored.
"""

from __future__ import annotations

import logging
import socket

log = logging.getLogger("meshscale.netmark")

SO_MARK = 36
_mark = 0
_warned = False


def set_socket_mark(mark: int) -> None:
    """Mark every socket opened from now on with ``mark`` (0: none)."""
    global _mark
    _mark = mark


def socket_mark() -> int:
    return _mark


def apply(sock: socket.socket) -> None:
    """Set the process mark on ``sock`` (before it connects or sends)."""
    global _warned
    if not _mark:
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_MARK, _mark)
    except OSError as exc:
        if not _warned:
            _warned = True
            log.warning("cannot mark sockets (SO_MARK %#x): %s", _mark, exc)
