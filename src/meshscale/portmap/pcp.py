"""PCP (RFC 6887): the MAP opcode with its nonce, and the ANNOUNCE probe.

Wire layout (big-endian, UDP to the gateway's port 5351, shared with NAT-PMP)::

    request header (§7.1):   | vers 2 | R=0, opcode (1) | reserved (2) | requested lifetime (4) |
                             | client IP address (16, IPv4 as ::ffff:a.b.c.d) |          24 bytes
    response header (§7.2):  | vers 2 | R=1, opcode (1) | reserved (1) | result code (1) |
                             | lifetime (4) | epoch time (4) | reserved (12) |             24 bytes
    MAP body (§11.1):        | mapping nonce (12) | protocol (1) | reserved (3) |
                             | internal port (2) | suggested/assigned external port (2) |
                             | suggested/assigned external IP (16) |                     36 bytes

Options (§7.3) may follow either; they are skipped. A NAT-PMP-only gateway answers a PCP
request with a NAT-PMP "Unsupported Version" (version 0, result 1): ``parse_response`` reports
that as ``VersionMismatch`` so that a caller can fall back (RFC 6887 §9).

Pure: the nonce is passed in. Every parser raises only ``ParseError`` (a ValueError).
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from .errors import ParseError

PORT = 5351
VERSION = 2
OP_ANNOUNCE = 0
OP_MAP = 1
RESPONSE_BIT = 0x80
PROTO_UDP = 17
PROTO_TCP = 6
NONCE_LEN = 12
HEADER_LEN = 24
MAP_BODY_LEN = 36
MAX_DATAGRAM = 1100  # §7: PCP messages never exceed 1100 bytes
DEFAULT_LIFETIME = 7200  # seconds

RESULT_SUCCESS = 0
RESULT_NAMES = {
    0: "SUCCESS",
    1: "UNSUPP_VERSION",
    2: "NOT_AUTHORIZED",
    3: "MALFORMED_REQUEST",
    4: "UNSUPP_OPCODE",
    5: "UNSUPP_OPTION",
    6: "MALFORMED_OPTION",
    7: "NETWORK_FAILURE",
    8: "NO_RESOURCES",
    9: "UNSUPP_PROTOCOL",
    10: "USER_EX_QUOTA",
    11: "CANNOT_PROVIDE_EXTERNAL",
    12: "ADDRESS_MISMATCH",
    13: "EXCESSIVE_REMOTE_PEERS",
}

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_ANY4 = ipaddress.IPv6Address("::ffff:0.0.0.0")  # §11.1: "all zeros" IPv4 external address


@dataclass(frozen=True, slots=True)
class MapResponse:
    result: int
    lifetime: int  # seconds granted (on error: how long the error is valid)
    epoch: int
    nonce: bytes
    protocol: int
    internal_port: int
    external_port: int
    external_address: IPAddress

    @property
    def reason(self) -> str:
        return RESULT_NAMES.get(self.result, f"result code {self.result}")


@dataclass(frozen=True, slots=True)
class AnnounceResponse:
    result: int
    epoch: int


@dataclass(frozen=True, slots=True)
class VersionMismatch:
    """The server speaks another version (0 is NAT-PMP); ``version`` is what it answered with."""

    version: int
    result: int


Response = MapResponse | AnnounceResponse | VersionMismatch


def _wire_address(addr: IPAddress) -> bytes:
    if isinstance(addr, ipaddress.IPv4Address):
        return b"\0" * 10 + b"\xff\xff" + addr.packed
    return addr.packed


def _unwire_address(raw: bytes) -> IPAddress:
    v6 = ipaddress.IPv6Address(raw)
    return v6.ipv4_mapped or v6


def _header(opcode: int, lifetime: int, client: IPAddress) -> bytes:
    if not 0 <= lifetime <= 0xFFFFFFFF:
        raise ValueError(f"lifetime {lifetime} out of range")
    return struct.pack("!BBHI", VERSION, opcode, 0, lifetime) + _wire_address(client)


def announce_request(client: IPAddress) -> bytes:
    """An ANNOUNCE request (§14.1): a cheap probe of whether the gateway speaks PCP."""
    return _header(OP_ANNOUNCE, 0, client)


def map_request(
    client: IPAddress,
    internal_port: int,
    nonce: bytes,
    *,
    lifetime: int = DEFAULT_LIFETIME,
    external_port: int = 0,
    external_address: IPAddress | None = None,
    protocol: int = PROTO_UDP,
) -> bytes:
    """A 60-byte MAP request (§11.1); ``lifetime=0`` with the same nonce deletes it (§15)."""
    if len(nonce) != NONCE_LEN:
        raise ValueError(f"PCP nonce must be {NONCE_LEN} bytes, got {len(nonce)}")
    for name, port in (("internal port", internal_port), ("external port", external_port)):
        if not 0 <= port <= 0xFFFF:
            raise ValueError(f"{name} {port} is not a port number")
    if not 0 <= protocol <= 0xFF:
        raise ValueError(f"protocol {protocol} out of range")
    suggested = _wire_address(external_address) if external_address is not None else _ANY4.packed
    body = nonce + struct.pack("!B3xHH", protocol, internal_port, external_port) + suggested
    return _header(OP_MAP, lifetime, client) + body


def release_request(client: IPAddress, internal_port: int, nonce: bytes) -> bytes:
    """Delete the mapping made with ``nonce`` (§15: MAP with lifetime 0)."""
    return map_request(client, internal_port, nonce, lifetime=0)


def parse_response(data: bytes) -> Response:
    """Parse one PCP response datagram; raise ParseError if it is not one."""
    if len(data) < 4:
        raise ParseError(f"PCP response too short: {len(data)} bytes")
    if len(data) > MAX_DATAGRAM:
        raise ParseError(f"PCP response too long: {len(data)} bytes")
    version = data[0]
    if version != VERSION:
        # NAT-PMP answers with a 2-byte result code at [2:4]; PCP ones carry it at [3].
        result = struct.unpack_from("!H", data, 2)[0] if version == 0 else data[3]
        return VersionMismatch(version, result)
    if len(data) < HEADER_LEN or len(data) % 4:
        raise ParseError(f"PCP response of {len(data)} bytes is not a whole header plus words")
    op, result, lifetime, epoch = struct.unpack_from("!BxBII", data, 1)
    if not op & RESPONSE_BIT:
        raise ParseError(f"PCP opcode {op} is a request, not a response")
    opcode = op & ~RESPONSE_BIT
    if opcode == OP_ANNOUNCE:
        return AnnounceResponse(result, epoch)
    if opcode != OP_MAP:
        raise ParseError(f"PCP response to unexpected opcode {opcode}")
    if len(data) < HEADER_LEN + MAP_BODY_LEN:
        raise ParseError(f"PCP MAP response too short: {len(data)} bytes")
    body = HEADER_LEN
    nonce = bytes(data[body : body + NONCE_LEN])
    protocol, internal, external = struct.unpack_from("!B3xHH", data, body + NONCE_LEN)
    address = _unwire_address(bytes(data[body + 20 : body + 36]))
    return MapResponse(result, lifetime, epoch, nonce, protocol, internal, external, address)
