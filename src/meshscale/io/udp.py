"""A UDP socket for the data plane: batched sends with UDP GSO, batched receives with UDP GRO.

    send_batch(addr, [[hdr, ct], [hdr, ct], ...])
        -> sendmsg([hdr, ct, hdr, ct, ...], [(SOL_UDP, UDP_SEGMENT, u16 size)], 0, addr)
           one call per run of equal-size messages (the last of a run may be shorter), at most
           64 segments and 65507 (IPv4) / 65527 (IPv6) bytes: the kernel cuts it into datagrams.
    recv_batch()
        -> recvmsg_into(64 KiB) with UDP_GRO on: one call may return many datagrams of one
           sender glued together, with a cmsg (SOL_UDP, UDP_GRO, int size) saying where to cut;
           then more calls with MSG_DONTWAIT until ~64 datagrams or nothing is queued.

(docs/protocol/wireguard.md §12 item 5 and 15 item 3; wireguard-go conn/bind_std.go,
conn/gso_linux.go.) Python has no sendmmsg/recvmmsg; GSO/GRO give the same batching with one
syscall. If the kernel refuses GSO for a send (EIO: the egress device cannot checksum; EINVAL or
EMSGSIZE three times in a row), GSO is turned off for this socket; refused datagrams are resent one
by one.

The socket is blocking, for use from dedicated threads (the GIL is released in the syscalls).
`close()` shuts the socket down first, which wakes a thread blocked in recv_batch; that thread
then raises UDPClosedError.

Addresses are (host, port) tuples. An IPv6 socket bound to "::" is dual-stack: IPv4 peers
appear as plain IPv4 hosts, and IPv4 hosts given to send_batch are mapped (::ffff:a.b.c.d).
"""

from __future__ import annotations

import contextlib
import errno
import socket
import struct
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from . import netmark

__all__ = ["Address", "Bytes", "UDPClosedError", "UDPSocket", "UDPStats"]

Address = tuple[str, int]
# Buffers of one datagram; len() must be the byte count (memoryviews of format "B").
Bytes = bytes | bytearray | memoryview

SOL_UDP = 17
UDP_SEGMENT = 103
UDP_GRO = 104
SO_SNDBUFFORCE = 32
SO_MARK = 36
SO_RCVBUFFORCE = 33
SOCKET_BUFFER = 7 * 1024 * 1024  # in bytes, as wireguard-go (socketBufferSize)
MAX_GSO_SEGMENTS = 64  # kernel limit (UDP_MAX_SEGMENTS)
MAX_GSO_BYTES_V4 = 65535 - 20 - 8  # in bytes: one IPv4 UDP datagram's payload limit
MAX_GSO_BYTES_V6 = 65535 - 8  # in bytes: IPv6 payload length excludes the fixed header
RECV_SIZE = 65536  # in bytes: the largest (GRO-coalesced) datagram
RECV_ARENA = 1024 * 1024 + RECV_SIZE  # in bytes: one recv_batch's datagrams
DEFAULT_RECV_BATCH = 64  # datagrams per recv_batch
_ALIGN = 16
_ANC_SIZE = socket.CMSG_SPACE(4)  # UDP_GRO delivers the segment size as an int
_U16 = struct.Struct("=H")
_I32 = struct.Struct("=i")
# GSO is given up for good on EIO (no checksum offload on the egress device; wireguard-go
# errShouldDisableUDPGSO) or after this many EINVAL/EMSGSIZE refusals in a row.
GSO_EINVAL_LIMIT = 3


class UDPClosedError(OSError):
    """The socket was closed by close()."""


@dataclass(frozen=True, slots=True)
class UDPStats:
    sent: int  # datagrams handed to the kernel
    send_calls: int  # sendmsg calls
    send_dropped: int  # datagrams lost to send errors
    received: int  # datagrams returned by recv_batch
    recv_calls: int  # recvmsg calls that returned data
    recv_dropped: int  # truncated datagrams and receive errors


class UDPSocket:
    """A bound UDP socket with GSO sends and GRO receives. Use `UDPSocket.bind`."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.family = sock.family
        self._max_bytes = MAX_GSO_BYTES_V4 if sock.family == socket.AF_INET else MAX_GSO_BYTES_V6
        self.gso = _probe_gso(sock)
        self.gro = _enable_gro(sock)
        self._gso_einval = 0
        self._closed = False
        self._rlock = threading.Lock()
        self._wlock = threading.Lock()
        self._arena = bytearray(RECV_ARENA)
        self._amv = memoryview(self._arena)
        self._anc: dict[int, list[tuple[int, int, bytes]]] = {}
        self._dest: dict[Address, tuple[str, int]] = {}
        self._sent = self._send_calls = self._send_dropped = 0
        self._received = self._recv_calls = self._recv_dropped = 0
        # The last recv_batch emptied the queue: the next lone datagram is returned at once.
        self._drained = True

    @classmethod
    def bind(cls, host: str = "::", port: int = 0) -> UDPSocket:
        """Bind a UDP socket. "::" (or "") is dual-stack IPv6+IPv4; port 0 picks a free port."""
        if host in ("", "::"):
            family, host = socket.AF_INET6, "::"
        elif ":" in host:
            family = socket.AF_INET6
        else:
            family = socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if host == "::" else 1)
            for force, plain in (
                (SO_RCVBUFFORCE, socket.SO_RCVBUF),
                (SO_SNDBUFFORCE, socket.SO_SNDBUF),
            ):
                try:
                    sock.setsockopt(socket.SOL_SOCKET, force, SOCKET_BUFFER)  # root only
                except OSError:
                    sock.setsockopt(socket.SOL_SOCKET, plain, SOCKET_BUFFER)
            netmark.apply(sock)
            sock.bind((host, port))
        except BaseException:
            sock.close()
            raise
        return cls(sock)

    def fileno(self) -> int:
        return self._sock.fileno()

    def set_mark(self, mark: int) -> None:
        """Set SO_MARK (WireGuard's fwmark) on outgoing packets; 0 clears it. Needs root."""
        self._sock.setsockopt(socket.SOL_SOCKET, SO_MARK, mark)

    def getsockname(self) -> Address:
        host, port = self._sock.getsockname()[:2]
        return host, port

    def statistics(self) -> UDPStats:
        return UDPStats(
            self._sent,
            self._send_calls,
            self._send_dropped,
            self._received,
            self._recv_calls,
            self._recv_dropped,
        )

    def close(self) -> None:
        """Close the socket, waking a thread blocked in recv_batch (it raises UDPClosedError)."""
        if self._closed:
            return
        self._closed = True
        # ENOTCONN on an unconnected socket, but the shutdown still wakes blocked readers.
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        with self._rlock, self._wlock:
            self._sock.close()

    def __enter__(self) -> UDPSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- send --------------------------------------------------------------------------

    def _resolve(self, addr: Address) -> tuple[str, int]:
        dst = self._dest.get(addr)
        if dst is None:
            host, port = addr[0], addr[1]
            if self.family == socket.AF_INET6 and ":" not in host:
                host = "::ffff:" + host
            if len(self._dest) >= 1024:  # bound the cache: one entry per peer endpoint
                self._dest.clear()
            dst = self._dest[addr] = (host, port)
        return dst

    def send_batch(self, addr: Address, messages: Sequence[Sequence[Bytes]]) -> int:
        """Send each message (a list of buffers forming one datagram) to `addr`.

        Returns the number of datagrams the kernel accepted; the rest are counted as dropped
        (unreachable, no buffer space). Raises UDPClosedError after close().
        """
        with self._wlock:
            if self._closed:
                raise UDPClosedError(errno.EBADF, "socket closed")
            dst = self._resolve(addr)
            sendmsg = self._sock.sendmsg
            total = len(messages)
            if total == 1:  # a lone datagram (latency): no GSO grouping to set up
                try:
                    sendmsg(messages[0], (), 0, dst)
                    sent = 1
                except OSError as e:
                    self._check_closed(e)
                    sent = 0
                self._sent += sent
                self._send_calls += 1
                self._send_dropped += 1 - sent
                return sent
            sent = calls = 0
            i = 0
            if self.gso:
                maxb = self._max_bytes
                anc = self._anc
                while i < total:
                    first = messages[i]
                    size = 0
                    for b in first:
                        size += len(b)
                    bufs = list(first)
                    used = size
                    j = i + 1
                    while j < total and j - i < MAX_GSO_SEGMENTS:
                        m = messages[j]
                        s = 0
                        for b in m:
                            s += len(b)
                        if s > size or used + s > maxb:
                            break
                        bufs.extend(m)
                        used += s
                        j += 1
                        if s < size:  # only the last segment may be short
                            break
                    calls += 1
                    try:
                        if j - i == 1:
                            sendmsg(bufs, (), 0, dst)
                        else:
                            cm = anc.get(size)
                            if cm is None:
                                cm = anc[size] = [(SOL_UDP, UDP_SEGMENT, _U16.pack(size))]
                            sendmsg(bufs, cm, 0, dst)
                        sent += j - i
                        self._gso_einval = 0
                    except OSError as e:
                        self._check_closed(e)
                        if e.errno == errno.EIO and j - i > 1:
                            self.gso = False  # the egress device cannot do it: for good
                            break
                        if e.errno in (errno.EINVAL, errno.EMSGSIZE) and j - i > 1:
                            # Maybe just this group (a segment above the path MTU, which plain
                            # sends may still fragment): resend it one by one, and give up on
                            # GSO only if it keeps happening.
                            self._gso_einval += 1
                            if self._gso_einval >= GSO_EINVAL_LIMIT:
                                self.gso = False
                            for k in range(i, j):
                                calls += 1
                                with contextlib.suppress(OSError):
                                    sendmsg(messages[k], (), 0, dst)
                                    sent += 1
                    i = j
            for k in range(i, total):  # no GSO (or it just failed): one datagram per call
                calls += 1
                try:
                    sendmsg(messages[k], (), 0, dst)
                    sent += 1
                except OSError as e:
                    self._check_closed(e)
            self._sent += sent
            self._send_calls += calls
            self._send_dropped += total - sent
            return sent

    # ---- receive -----------------------------------------------------------------------

    def recv_batch(
        self, max_msgs: int = DEFAULT_RECV_BATCH, *, lone: bool = False
    ) -> list[tuple[memoryview, Address]]:
        """Block for the first datagram, then drain without blocking up to ~`max_msgs`.

        Returns (datagram, sender) pairs; GRO-coalesced datagrams are cut at the segment size.
        The views point into a buffer reused by the next recv_batch: copy what must outlive
        it. Raises UDPClosedError after close().

        lone (for latency): when the previous call drained the queue and the first receive is
        one plain (not coalesced) datagram, return it alone, without the receive that would
        only find the queue empty; a burst is then batched from its second receive on.
        """
        with self._rlock:
            if self._closed:
                raise UDPClosedError(errno.EBADF, "socket closed")
            recvmsg_into = self._sock.recvmsg_into
            amv = self._amv
            limit = len(self._arena) - RECV_SIZE
            out: list[tuple[memoryview, Address]] = []
            pos = calls = dropped = 0
            while True:
                flags = socket.MSG_DONTWAIT if out else 0
                try:
                    n, anc, mflags, addr = recvmsg_into(
                        [amv[pos : pos + RECV_SIZE]], _ANC_SIZE, flags
                    )
                except BlockingIOError:
                    self._drained = True
                    break
                except OSError as e:
                    self._check_closed(e)
                    dropped += 1  # e.g. a queued ICMP error; keep what we have
                    if out or dropped > max_msgs:
                        break
                    continue
                if self._closed:
                    raise UDPClosedError(errno.EBADF, "socket closed")
                calls += 1
                if mflags & socket.MSG_TRUNC:
                    dropped += 1
                    continue
                if n == 0:
                    continue
                host = addr[0]
                if host.startswith("::ffff:") and "." in host:
                    host = host[7:]
                peer = (host, addr[1])
                seg = n
                for level, typ, data in anc:
                    if level == SOL_UDP and typ == UDP_GRO:
                        seg = _I32.unpack_from(data)[0]
                end = pos + n
                if 0 < seg < n:
                    out.extend((amv[o : min(o + seg, end)], peer) for o in range(pos, end, seg))
                else:
                    out.append((amv[pos:end], peer))
                pos = (end + _ALIGN - 1) & -_ALIGN
                if len(out) >= max_msgs or pos > limit:
                    self._drained = False
                    break
                if lone and self._drained and len(out) == 1 and calls == 1:
                    self._drained = False  # a lone datagram after idle: no draining receive
                    break
            self._received += len(out)
            self._recv_calls += calls
            self._recv_dropped += dropped
            return out

    def _check_closed(self, e: OSError) -> None:
        if self._closed or e.errno == errno.EBADF:
            raise UDPClosedError(errno.EBADF, "socket closed") from e


def _probe_gso(sock: socket.socket) -> bool:
    try:
        sock.getsockopt(SOL_UDP, UDP_SEGMENT)
    except OSError:
        return False
    return True


def _enable_gro(sock: socket.socket) -> bool:
    try:
        sock.setsockopt(SOL_UDP, UDP_GRO, 1)
    except OSError:
        return False
    return True
