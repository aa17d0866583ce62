"""Sockets created inside a lab namespace, for in-process servers and clients in tests.

A socket belongs to the network namespace it was created in, whatever thread later uses it. So a
short-lived helper thread enters the namespace (setns(2) changes only the calling thread), creates
the socket and exits; the caller gets a socket that lives in the lab while the rest of the
process stays in the machine's namespace. This lets a test run, say, an asyncio server in-process
(`loop.create_server(sock=...)`) on a lab host's address.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import socket
import threading

from meshscale.lab.netns import NETNS_RUN_DIR, LabError

CLONE_NEWNET = 0x40000000


def _libc_setns() -> ctypes._NamedFuncPointer:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    fn = libc.setns
    fn.argtypes = [ctypes.c_int, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


def socket_in_netns(
    ns: str,
    family: int = socket.AF_INET,
    type: int = socket.SOCK_STREAM,
    proto: int = 0,
) -> socket.socket:
    """A new socket in named network namespace `ns`."""
    result: list[socket.socket] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            fd = os.open(NETNS_RUN_DIR / ns, os.O_RDONLY | os.O_CLOEXEC)
            try:
                if _libc_setns()(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise LabError(f"setns({ns}): {os.strerror(err)}")
            finally:
                os.close(fd)
            result.append(socket.socket(family, type, proto))
        except BaseException as e:
            errors.append(e)

    # The thread dies right after; its changed namespace goes with it.
    t = threading.Thread(target=worker, name=f"setns-{ns}", daemon=True)
    t.start()
    t.join(10.0)
    if errors:
        raise errors[0]
    if not result:
        raise LabError(f"could not create a socket in {ns}")
    return result[0]
