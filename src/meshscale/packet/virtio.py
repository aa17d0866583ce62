"""virtio_net_hdr: the 10-byte header in front of every TUN read and write with IFF_VNET_HDR.

    offset size field        values
    0      1    flags        F_NEEDS_CSUM = 1 (L4 checksum left to finish), F_DATA_VALID = 2
    1      1    gso_type     GSO_NONE 0, GSO_TCPV4 1, GSO_UDP 3 (legacy UFO), GSO_TCPV6 4,
                             GSO_UDP_L4 5; bit GSO_ECN (0x80) marks ECN/CWR
    2      2    hdr_len      bytes of IP + L4 headers (not trusted on read, see tso.py)
    4      2    gso_size     payload bytes per segment
    6      2    csum_start   offset of the L4 header (= IP header length)
    8      2    csum_offset  checksum field offset within L4 (TCP 16, UDP 6)

Fields are in host byte order: a TUN without TUNSETVNETLE/BE uses the legacy virtio layout,
which is native-endian (Linux include/uapi/linux/virtio_net.h; wireguard-go tun/offload_linux.go).
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from typing_extensions import Buffer

from .errors import ParseError

__all__ = [
    "F_DATA_VALID",
    "F_NEEDS_CSUM",
    "GSO_ECN",
    "GSO_NONE",
    "GSO_TCPV4",
    "GSO_TCPV6",
    "GSO_UDP",
    "GSO_UDP_L4",
    "VIRTIO_NET_HDR_LEN",
    "ZERO_HDR",
    "VirtioNetHdr",
]

VIRTIO_NET_HDR_LEN = 10  # in bytes

F_NEEDS_CSUM = 1
F_DATA_VALID = 2

GSO_NONE = 0
GSO_TCPV4 = 1
GSO_UDP = 3
GSO_TCPV6 = 4
GSO_UDP_L4 = 5
GSO_ECN = 0x80

HDR_STRUCT = struct.Struct("=BBHHHH")

# An all-zero header: a plain packet whose checksum the kernel verifies itself.
ZERO_HDR = bytes(VIRTIO_NET_HDR_LEN)


class VirtioNetHdr(NamedTuple):
    flags: int = 0
    gso_type: int = GSO_NONE
    hdr_len: int = 0
    gso_size: int = 0
    csum_start: int = 0
    csum_offset: int = 0

    def pack(self) -> bytes:
        return HDR_STRUCT.pack(*self)

    @classmethod
    def unpack(cls, data: Buffer) -> VirtioNetHdr:
        """Parse the first 10 bytes of `data`; ParseError if it is shorter."""
        mv = memoryview(data)
        if mv.nbytes < VIRTIO_NET_HDR_LEN:
            raise ParseError(f"virtio_net_hdr needs {VIRTIO_NET_HDR_LEN} bytes, got {mv.nbytes}")
        return cls(*HDR_STRUCT.unpack_from(mv))
