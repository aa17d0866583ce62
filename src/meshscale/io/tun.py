"""A Linux TUN device with virtio-net offloads, read and written in batches.

    TunDevice.open("ms0")  ->  /dev/net/tun, TUNSETIFF(IFF_TUN | IFF_NO_PI | IFF_VNET_HDR)
                               TUNSETOFFLOAD(CSUM | TSO4 | TSO6 [| USO4 | USO6])
                               SIOCSIFMTU, SIOCSIFFLAGS(IFF_UP)

    read_batch()   one read per frame; a frame is vnet header + packet or + TCP/UDP
                   super-packet of up to 64 KB, split into MTU-sized IP packets (packet.tso)
    write_batch()  packets coalesced per flow (packet.gro), one os.writev per result

Capability ladder, probed at open (docs/protocol/wireguard.md §15 item 6): offload with USO ->
offload (TCP only) -> plain (no vnet header, one packet per read and write). `offload` on the device
says which one is in use; the packets going in and out look the same in every mode.

Threading: one thread may read while another writes (the data plane's TX and RX threads). The
file descriptor is non-blocking; a reader with nothing to read sleeps in poll() on the TUN and
on a wake-up pipe, so `close()` from any thread wakes it (it then raises TunClosedError).
Deleting the interface (ip link del) makes reads and writes fail with EBADFD: that surfaces
as TunGoneError so the daemon can exit cleanly.

Errors (all OSError, so a caller that only wants to stop can catch that):

    OSError
     └── TunError            setting the device up failed
          ├── TunClosedError  close() was called
          └── TunGoneError    the interface was deleted under us
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import select
import socket
import struct
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from ..packet.gro import Coalescer, Packet, trim_padding
from ..packet.tso import Splitter, split_room
from ..packet.virtio import VIRTIO_NET_HDR_LEN, ZERO_HDR

__all__ = [
    "TunClosedError",
    "TunDevice",
    "TunError",
    "TunGoneError",
    "TunStats",
]

# ioctl numbers and flags (linux/if_tun.h, linux/sockios.h).
TUNSETIFF = 0x400454CA
TUNSETOFFLOAD = 0x400454D0
TUNGETIFF = 0x800454D2
TUNSETVNETHDRSZ = 0x400454D8
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
TUN_F_USO4 = 0x20
TUN_F_USO6 = 0x40
TCP_OFFLOADS = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6
UDP_OFFLOADS = TUN_F_USO4 | TUN_F_USO6
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
SIOCGIFMTU = 0x8921
SIOCSIFMTU = 0x8922
IFF_UP = 0x1
IFNAMSIZ = 16
_IFREQ_LEN = 40  # in bytes: struct ifreq on 64-bit Linux

# Read buffer per frame: the 64 KB GSO limit plus the vnet header, with slack to detect
# truncation (a read that fills the buffer is dropped).
READ_SIZE = 65536 + VIRTIO_NET_HDR_LEN + 64
# Arena for one read_batch: frames and their split segments. Views returned by read_batch
# point into it, so it is reused only by the next call. 2 MiB holds several super-packets.
READ_ARENA = 2 * 1024 * 1024
DEFAULT_BATCH = 128  # packets per read_batch, as wireguard-go (conn.IdealBatchSize)
_ALIGN = 16
_ZEROS = bytes(_ALIGN)


class TunError(OSError):
    """The TUN device could not be set up or used."""


class TunClosedError(TunError):
    """The device was closed by close()."""


class TunGoneError(TunError):
    """The network interface was deleted; the device cannot be used any more."""


@dataclass(frozen=True, slots=True)
class TunStats:
    reads: int  # read() syscalls that returned a frame
    packets_read: int  # IP packets returned by read_batch
    super_packets: int  # frames split (GSO)
    read_dropped: int  # frames dropped as malformed or truncated
    writes: int  # write/writev syscalls
    packets_written: int  # IP packets handed to write_batch and accepted
    coalesced: int  # packets merged into another packet's write
    write_dropped: int  # packets lost to write errors
    gro_bad_checksum: int  # packets not merged because a checksum did not verify


def _ifreq(name: str, fmt: str = "", *values: int) -> bytearray:
    raw = name.encode()
    if not raw or len(raw) >= IFNAMSIZ:
        raise ValueError(f"interface name must be 1..{IFNAMSIZ - 1} bytes: {name!r}")
    buf = bytearray(_IFREQ_LEN)
    buf[: len(raw)] = raw
    if fmt:
        struct.pack_into(fmt, buf, IFNAMSIZ, *values)
    return buf


class TunDevice:
    """A TUN interface opened for batched reads and writes of IP packets.

    Use `TunDevice.open`; the constructor takes an already configured descriptor.
    """

    def __init__(
        self,
        fd: int,
        name: str,
        mtu: int,
        *,
        vnet_hdr: bool,
        uso: bool,
        gro_verify: bool = True,
    ) -> None:
        self.name = name
        self.mtu = mtu
        self.offload = vnet_hdr  # vnet header + TSO in use
        self.uso = uso  # UDP segmentation offload in use (UDP split and UDP GRO)
        self.ifindex = socket.if_nametoindex(name)
        self._fd = fd
        self._closed = False
        self._rlock = threading.Lock()
        self._wlock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._poll = select.poll()
        self._poll.register(fd, select.POLLIN)
        self._poll.register(self._wake_r, select.POLLIN)
        self._arena = bytearray(READ_ARENA)
        self._amv = memoryview(self._arena)
        self._splitter = Splitter(self._arena)
        self._gro = Coalescer(udp=uso, verify_checksums=gro_verify)
        self._room = READ_SIZE + split_room(READ_SIZE) + _ALIGN if vnet_hdr else 65536
        self._reads = self._packets_read = self._read_dropped = 0
        # The last read_batch emptied the queue: the next lone packet goes out at once.
        self._drained = True
        self._writes = self._packets_written = self._write_dropped = 0

    # ---- setup -------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        name: str,
        mtu: int = 1420,
        offload: bool = True,
        *,
        up: bool = True,
        udp_offload: bool = True,
        gro_verify: bool = True,
    ) -> TunDevice:
        """Create (or attach to) TUN interface `name`, set its MTU and bring it up.

        offload: try IFF_VNET_HDR with TSO (and USO if `udp_offload`); falls back to a plain
        TUN when the kernel refuses. gro_verify: check each packet's L4 checksum before merging
        it on write (WireGuard already authenticated it, so a driver may turn this off).
        Raises TunError (with the errno) if the device cannot be created.
        """
        vnet = uso = False
        fd = -1
        if offload:
            try:
                fd, actual = _create(name, IFF_TUN | IFF_NO_PI | IFF_VNET_HDR)
            except TunError as e:
                if e.errno != errno.EINVAL:  # EPERM, EBUSY...: the plain rung would fail too
                    raise
        if fd >= 0:
            if udp_offload and _set_offload(fd, TCP_OFFLOADS | UDP_OFFLOADS):
                vnet = uso = True
            elif _set_offload(fd, TCP_OFFLOADS):
                vnet = True
            else:
                # A vnet header without TSO would only add cost; start over without it.
                os.close(fd)
                fd = -1
        if fd < 0:
            fd, actual = _create(name, IFF_TUN | IFF_NO_PI)
        try:
            _configure(actual, mtu, up)
            os.set_blocking(fd, False)
            return cls(fd, actual, mtu, vnet_hdr=vnet, uso=uso, gro_verify=gro_verify)
        except BaseException:
            os.close(fd)
            raise

    @classmethod
    def from_fd(cls, fd: int, mtu: int | None = None, *, gro_verify: bool = True) -> TunDevice:
        """Adopt an already attached TUN descriptor (e.g. WG_TUN_FD from a parent process).

        Its name and flags come from TUNGETIFF (wireguard-go initFromFlags): with IFF_VNET_HDR
        the offloads are (re)enabled as in `open`; otherwise it is used plainly. `mtu` defaults
        to the interface's current MTU. The descriptor is made non-blocking and owned by the
        returned device.
        """
        ifr = bytearray(_IFREQ_LEN)
        try:
            fcntl.ioctl(fd, TUNGETIFF, ifr)
        except OSError as e:
            raise TunError(e.errno, f"TUNGETIFF: {e.strerror}") from e
        name = bytes(ifr[:IFNAMSIZ]).rstrip(b"\0").decode()
        (flags,) = struct.unpack_from("H", ifr, IFNAMSIZ)
        vnet = uso = False
        if flags & IFF_VNET_HDR:
            vnet = True
            # Another program may have changed the header size (e.g. 12 for MRG_RXBUF).
            fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", VIRTIO_NET_HDR_LEN))
            if _set_offload(fd, TCP_OFFLOADS | UDP_OFFLOADS):
                uso = True
            else:
                _set_offload(fd, TCP_OFFLOADS)  # without TSO frames just arrive unsegmented
        if mtu is None:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                ifr = _ifreq(name)
                fcntl.ioctl(s, SIOCGIFMTU, ifr)  # a mutable buffer is filled in place
                (mtu,) = struct.unpack_from("i", ifr, IFNAMSIZ)
        os.set_blocking(fd, False)
        return cls(fd, name, mtu, vnet_hdr=vnet, uso=uso, gro_verify=gro_verify)

    def fileno(self) -> int:
        return self._fd

    def statistics(self) -> TunStats:
        sp, gro = self._splitter.stats, self._gro.stats
        return TunStats(
            reads=self._reads,
            packets_read=self._packets_read,
            super_packets=sp.super_packets,
            read_dropped=self._read_dropped + sum(sp.dropped.values()),
            writes=self._writes,
            packets_written=self._packets_written,
            coalesced=gro.coalesced,
            write_dropped=self._write_dropped,
            gro_bad_checksum=gro.bad_checksum,
        )

    def close(self) -> None:
        """Close the device; wakes a reader blocked in read_batch (it raises TunClosedError)."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")
        # Wait for in-flight calls to leave the descriptor before its number can be reused.
        with self._rlock, self._wlock:
            os.close(self._fd)
            os.close(self._wake_r)
            os.close(self._wake_w)

    def __enter__(self) -> TunDevice:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- data path ---------------------------------------------------------------------

    def read_batch(
        self, max_packets: int = DEFAULT_BATCH, *, pad: bool = False, lone: bool = False
    ) -> list[memoryview]:
        """Block until at least one packet is available, then drain up to `max_packets`.

        Returns plain IP packets (super-packets already split, checksums complete). The views
        point into a buffer reused by the next read_batch call: copy what must outlive it.
        A super-packet is never split across calls, so a batch may exceed `max_packets` by up
        to one super-packet's segments. Raises TunClosedError or TunGoneError.

        pad: extend each view with zero bytes to WireGuard's padded plaintext length,
        min(roundup16(len), mtu), ready to encrypt without a copy. The IP header still gives
        the packet's own length.

        lone (for latency): when the previous call drained the queue (the device was idle) and
        the first frame is one plain packet, return it alone, without the read that would only
        find the queue empty; a burst is then batched from its second read on.
        """
        with self._rlock:
            if self._closed:
                raise TunClosedError(errno.EBADF, "TUN device closed")
            fd = self._fd
            amv = self._amv
            out: list[memoryview] = []
            readv = os.readv
            size = READ_SIZE
            limit = len(self._arena) - self._room
            pos = 0
            reads = dropped = 0
            while True:
                try:
                    n = readv(fd, [amv[pos : pos + size]])
                    break
                except BlockingIOError:
                    self._wait()
                except OSError as e:
                    self._read_failed(e)
            split = self._splitter.split if self.offload else None
            pad_mtu = self.mtu if pad else 0
            while True:
                reads += 1
                if n >= size:  # truncated: the kernel had more than we can hold
                    dropped += 1
                elif split is not None:
                    pos = split(pos, n, pos + n, out, pad_mtu)
                else:
                    if pad_mtu and n <= pad_mtu:
                        padded = min((n + 15) & -16, pad_mtu)
                        amv[pos + n : pos + padded] = _ZEROS[: padded - n]
                        n = padded
                    out.append(amv[pos : pos + n])
                    pos += n
                pos = (pos + _ALIGN - 1) & -_ALIGN
                if len(out) >= max_packets or pos > limit:
                    self._drained = False
                    break
                if lone and self._drained and reads == 1 and len(out) == 1:
                    self._drained = False  # a lone packet after idle: no draining read
                    break
                try:
                    n = readv(fd, [amv[pos : pos + size]])
                except BlockingIOError:
                    self._drained = True
                    break
                except OSError as e:
                    if out:  # deliver what we have; the error repeats on the next call
                        break
                    self._read_failed(e)
            self._reads += reads
            self._read_dropped += dropped
            self._packets_read += len(out)
            return out

    def write_batch(self, packets: Sequence[Packet]) -> int:
        """Write IP packets to the kernel, coalescing TCP (and UDP) flows when offloading.

        Returns the number of packets accepted; packets lost to write errors (link down,
        no buffer space) are counted, not raised. Raises TunClosedError or TunGoneError.
        """
        with self._wlock:
            if self._closed:
                raise TunClosedError(errno.EBADF, "TUN device closed")
            fd = self._fd
            lost = 0
            if self.offload and len(packets) == 1:
                # A lone packet (latency): nothing to coalesce; the coalescer would only cut
                # WireGuard padding and wrap it in a plain vnet header, as this does.
                try:
                    os.writev(fd, [ZERO_HDR, trim_padding(packets[0])])
                except OSError as e:
                    self._write_failed(e)
                    lost = 1
                self._writes += 1
            elif self.offload:
                entries = self._gro.coalesce(packets)
                writev = os.writev
                for iov in entries:
                    try:
                        writev(fd, iov)
                    except OSError as e:
                        self._write_failed(e)
                        lost += 1 if len(iov) == 2 else len(iov) - 2
                self._writes += len(entries)
            else:
                write = os.write
                for p in packets:
                    try:
                        write(fd, p)
                    except OSError as e:
                        self._write_failed(e)
                        lost += 1
                self._writes += len(packets)
            self._write_dropped += lost
            self._packets_written += len(packets) - lost
            return len(packets) - lost

    # ---- helpers -----------------------------------------------------------------------

    def _wait(self) -> None:
        # Sleep until the TUN is readable (or in error) or close() wrote to the wake pipe.
        while True:
            for fd, _ in self._poll.poll():
                if fd == self._wake_r or self._closed:
                    raise TunClosedError(errno.EBADF, "TUN device closed")
                return

    def _read_failed(self, e: OSError) -> None:
        if self._closed:
            raise TunClosedError(errno.EBADF, "TUN device closed") from e
        if e.errno == errno.EBADFD or self._gone():
            raise TunGoneError(e.errno, f"TUN interface {self.name} is gone") from e
        raise e

    def _write_failed(self, e: OSError) -> None:
        if self._closed:
            raise TunClosedError(errno.EBADF, "TUN device closed") from e
        if e.errno == errno.EBADFD or (e.errno == errno.EIO and self._gone()):
            raise TunGoneError(e.errno, f"TUN interface {self.name} is gone") from e

    def _gone(self) -> bool:
        try:
            return socket.if_nametoindex(self.name) != self.ifindex
        except OSError:
            return True


def _create(name: str, flags: int) -> tuple[int, str]:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    try:
        ifr = _ifreq(name, "H", flags)
        fcntl.ioctl(fd, TUNSETIFF, ifr)
    except OSError as e:
        os.close(fd)
        raise TunError(e.errno, f"TUNSETIFF {name}: {e.strerror}") from e
    except BaseException:
        os.close(fd)
        raise
    return fd, bytes(ifr[:IFNAMSIZ]).rstrip(b"\0").decode()


def _set_offload(fd: int, flags: int) -> bool:
    try:
        fcntl.ioctl(fd, TUNSETOFFLOAD, flags)
    except OSError:
        return False
    return True


def _configure(name: str, mtu: int, up: bool) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            fcntl.ioctl(s, SIOCSIFMTU, _ifreq(name, "i", mtu))
            if up:
                ifr = _ifreq(name)
                fcntl.ioctl(s, SIOCGIFFLAGS, ifr)
                (flags,) = struct.unpack_from("H", ifr, IFNAMSIZ)
                fcntl.ioctl(s, SIOCSIFFLAGS, _ifreq(name, "H", flags | IFF_UP))
        except OSError as e:
            raise TunError(e.errno, f"configuring {name}: {e.strerror}") from e
