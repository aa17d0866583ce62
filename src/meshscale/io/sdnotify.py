"""systemd readiness notification (sd_notify(3)), for ``Type=notify`` units.

    notify("READY=1")      # once the program serves: systemd then starts what depends on it
    notify("STOPPING=1")   # on the way out

systemd passes the socket in ``$NOTIFY_SOCKET``: a filesystem path, or ``@name`` for an
abstract socket. Without it (not under systemd) ``notify`` does nothing and says so by
returning False; a failed send is logged, never raised: readiness is advice, not a reason
to stop serving.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)

ENV = "NOTIFY_SOCKET"


def notify_address(env: Mapping[str, str] | None = None) -> str | None:
    """Where to send, from $NOTIFY_SOCKET: a path, "\\0name" for an abstract socket, or None."""
    path = (os.environ if env is None else env).get(ENV, "")
    if not path.startswith(("/", "@")):
        return None  # unset, or a vsock address (not for a service on this host)
    return "\0" + path[1:] if path.startswith("@") else path


def notify(state: str, env: Mapping[str, str] | None = None) -> bool:
    """Send ``state`` (e.g. "READY=1\\nSTATUS=serving") to the service manager; True if sent."""
    addr = notify_address(env)
    if addr is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.sendto(state.encode(), addr)
    except OSError as exc:
        log.warning("sd_notify to %s failed: %s", addr.lstrip("\0"), exc)
        return False
    return True
