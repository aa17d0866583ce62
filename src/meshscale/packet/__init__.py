"""meshscale.packet: IP/TCP/UDP header views, the filter's packet summary, TSMP, checksums
and TUN offload (GSO split, GRO).

Sans-IO: nothing here reads a device or a clock.
"""

from .checksum import checksum, fold, ones_sum, pseudo_header_sum, segment_sums, verify
from .errors import ParseError
from .gro import Coalescer, GROStats, Packet, coalesce
from .ip import (
    IPPROTO_FRAGMENT,
    IPPROTO_ICMP,
    IPPROTO_ICMPV6,
    IPPROTO_IGMP,
    IPPROTO_SCTP,
    IPPROTO_TCP,
    IPPROTO_TSMP,
    IPPROTO_UDP,
    IPv4Header,
    IPv6Header,
    TCPHeader,
    UDPHeader,
    addresses,
    parse_ip,
)
from .parsed import PROTO_FRAGMENT, PROTO_UNKNOWN, Parsed, decode
from .tso import MAX_SEGMENTS, SplitStats, Splitter, gso_split, split_room
from .virtio import (
    F_DATA_VALID,
    F_NEEDS_CSUM,
    GSO_ECN,
    GSO_NONE,
    GSO_TCPV4,
    GSO_TCPV6,
    GSO_UDP_L4,
    VIRTIO_NET_HDR_LEN,
    ZERO_HDR,
    VirtioNetHdr,
)

__all__ = [
    "F_DATA_VALID",
    "F_NEEDS_CSUM",
    "GSO_ECN",
    "GSO_NONE",
    "GSO_TCPV4",
    "GSO_TCPV6",
    "GSO_UDP_L4",
    "IPPROTO_FRAGMENT",
    "IPPROTO_ICMP",
    "IPPROTO_ICMPV6",
    "IPPROTO_IGMP",
    "IPPROTO_SCTP",
    "IPPROTO_TCP",
    "IPPROTO_TSMP",
    "IPPROTO_UDP",
    "MAX_SEGMENTS",
    "PROTO_FRAGMENT",
    "PROTO_UNKNOWN",
    "VIRTIO_NET_HDR_LEN",
    "ZERO_HDR",
    "Coalescer",
    "GROStats",
    "IPv4Header",
    "IPv6Header",
    "Packet",
    "ParseError",
    "Parsed",
    "SplitStats",
    "Splitter",
    "TCPHeader",
    "UDPHeader",
    "VirtioNetHdr",
    "addresses",
    "checksum",
    "coalesce",
    "decode",
    "fold",
    "gso_split",
    "ones_sum",
    "parse_ip",
    "pseudo_header_sum",
    "segment_sums",
    "split_room",
    "verify",
]
