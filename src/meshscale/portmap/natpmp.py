"""NAT-PMP (RFC 6886): external-address and UDP/TCP mapping requests and their responses.

Wire layout (all big-endian, UDP to the gateway's port 5351)::

    request  external address (§3.2):  | vers 0 | op 0 |
    request  map (§3.3):               | vers 0 | op 1 UDP / 2 TCP | reserved (2) |
                                       | internal port (2) | suggested external port (2) |
                                       | requested lifetime (4) |
    response header (§3.5):            | vers 0 | op 128+op | result code (2) | epoch (4) |
    response external address (§3.2):  header + external IPv4 (4)           -> 12 bytes
    response map (§3.3):               header + internal port (2) | mapped external port (2) |
                                       lifetime (4)                         -> 16 bytes

A lifetime of 0 with external port 0 deletes the mapping (§3.4). Pure: no I/O, no clock.
Every parser raises only ``ParseError`` (a ValueError).
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from .errors import ParseError

PORT = 5351  # the gateway listens here (§3)
CLIENT_PORT = 5350  # announcements of a new epoch go to this port (§3.2.1)
VERSION = 0
OP_EXTERNAL_ADDRESS = 0
OP_MAP_UDP = 1
OP_MAP_TCP = 2
RESPONSE_BIT = 0x80
DEFAULT_LIFETIME = 7200  # seconds: the lifetime RFC 6886 §3.3 recommends

RESULT_SUCCESS = 0
RESULT_NAMES = {
    0: "Success",
    1: "Unsupported Version",
    2: "Not Authorized/Refused",
    3: "Network Failure",
    4: "Out of resources",
    5: "Unsupported opcode",
}


@dataclass(frozen=True, slots=True)
class ExternalAddressResponse:
    result: int
    epoch: int  # seconds since the gateway's port-mapping table was initialized
    address: ipaddress.IPv4Address


@dataclass(frozen=True, slots=True)
class MapResponse:
    opcode: int  # OP_MAP_UDP or OP_MAP_TCP
    result: int
    epoch: int
    internal_port: int
    external_port: int
    lifetime: int  # seconds the gateway granted


@dataclass(frozen=True, slots=True)
class ErrorResponse:
    """A well-formed response whose result code is not Success (no body fields to trust)."""

    opcode: int
    result: int
    epoch: int

    @property
    def reason(self) -> str:
        return RESULT_NAMES.get(self.result, f"result code {self.result}")


Response = ExternalAddressResponse | MapResponse | ErrorResponse


def _check_port(name: str, port: int) -> None:
    if not 0 <= port <= 0xFFFF:
        raise ValueError(f"{name} {port} is not a port number")


def external_address_request() -> bytes:
    """The two-byte request for the gateway's external IPv4 address (§3.2)."""
    return bytes((VERSION, OP_EXTERNAL_ADDRESS))


def map_request(
    internal_port: int,
    external_port: int = 0,
    lifetime: int = DEFAULT_LIFETIME,
    *,
    opcode: int = OP_MAP_UDP,
) -> bytes:
    """A 12-byte mapping request (§3.3); ``lifetime=0`` releases the mapping (§3.4)."""
    if opcode not in (OP_MAP_UDP, OP_MAP_TCP):
        raise ValueError(f"opcode {opcode} is not a NAT-PMP map opcode")
    _check_port("internal port", internal_port)
    _check_port("external port", external_port)
    if not 0 <= lifetime <= 0xFFFFFFFF:
        raise ValueError(f"lifetime {lifetime} out of range")
    return struct.pack("!BBHHHI", VERSION, opcode, 0, internal_port, external_port, lifetime)


def release_request(internal_port: int, *, opcode: int = OP_MAP_UDP) -> bytes:
    """Delete the mapping of ``internal_port`` (§3.4: lifetime 0, external port 0)."""
    return map_request(internal_port, 0, 0, opcode=opcode)


def parse_response(data: bytes) -> Response:
    """Parse one NAT-PMP response datagram; raise ParseError if it is not one."""
    if len(data) < 8:
        raise ParseError(f"NAT-PMP response too short: {len(data)} bytes")
    version, op, result, epoch = struct.unpack_from("!BBHI", data)
    if version != VERSION:
        raise ParseError(f"NAT-PMP version {version}, want 0")
    if not op & RESPONSE_BIT:
        raise ParseError(f"NAT-PMP opcode {op} is a request, not a response")
    opcode = op & ~RESPONSE_BIT
    if opcode not in (OP_EXTERNAL_ADDRESS, OP_MAP_UDP, OP_MAP_TCP):
        raise ParseError(f"NAT-PMP response to unknown opcode {opcode}")
    if result != RESULT_SUCCESS:
        # §3.5: on error the rest of the response may be absent or meaningless.
        return ErrorResponse(opcode, result, epoch)
    if opcode == OP_EXTERNAL_ADDRESS:
        if len(data) < 12:
            raise ParseError(f"NAT-PMP external address response too short: {len(data)} bytes")
        return ExternalAddressResponse(result, epoch, ipaddress.IPv4Address(data[8:12]))
    if len(data) < 16:
        raise ParseError(f"NAT-PMP map response too short: {len(data)} bytes")
    internal, external, lifetime = struct.unpack_from("!HHI", data, 8)
    return MapResponse(opcode, result, epoch, internal, external, lifetime)
