"""STUN binding request and response (RFC 5389 subset used by Tailscale): build and parse.

Header (20 bytes), then TLV attributes padded to 4 bytes::

    | type (2) | length (2) | magic cookie 21 12 A4 42 | transaction ID (12) |

Tailscale's request is exactly 40 bytes: Binding Request (0x0001), SOFTWARE "tailnode",
FINGERPRINT (CRC-32 of everything before it, XOR 0x5354554E; the header length already
counts the FINGERPRINT, RFC 5389 section 15.5). Its server answers with a Binding Success
Response (0x0101) holding only XOR-MAPPED-ADDRESS. Clients also accept XOR-MAPPED-ADDRESS
under 0x8020 and fall back to MAPPED-ADDRESS (0x0001).

Pure: the transaction ID is passed in. Every parser raises only ``ParseError`` (a ValueError).
"""

from __future__ import annotations

import ipaddress
import struct
import zlib
from dataclasses import dataclass

MAGIC_COOKIE = b"\x21\x12\xa4\x42"
HEADER_LEN = 20  # bytes
TXID_LEN = 12  # bytes
BINDING_REQUEST = 0x0001
BINDING_SUCCESS = 0x0101
ATTR_MAPPED_ADDRESS = 0x0001
ATTR_XOR_MAPPED_ADDRESS = 0x0020
ATTR_XOR_MAPPED_ADDRESS_ALT = 0x8020  # some servers use the comprehension-optional code
ATTR_SOFTWARE = 0x8022
ATTR_FINGERPRINT = 0x8028
FINGERPRINT_XOR = 0x5354554E  # RFC 5389 section 15.5
SOFTWARE = b"tailnode"
FAMILY_IPV4 = 0x01
FAMILY_IPV6 = 0x02

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class ParseError(ValueError):
    """The bytes are not the STUN message the caller asked for."""


@dataclass(frozen=True, slots=True)
class STUNResponse:
    txid: bytes
    addr: IPAddress
    port: int


def _attr(typ: int, value: bytes) -> bytes:
    pad = (-len(value)) % 4
    return struct.pack("!HH", typ, len(value)) + value + b"\0" * pad


def _fingerprint(msg: bytes) -> int:
    return (zlib.crc32(msg) & 0xFFFFFFFF) ^ FINGERPRINT_XOR


def _check_txid(txid: bytes) -> None:
    if len(txid) != TXID_LEN:
        raise ValueError(f"STUN transaction ID must be {TXID_LEN} bytes")


def request(txid: bytes, software: bytes = SOFTWARE) -> bytes:
    """A Binding Request exactly as Tailscale sends it (40 bytes with the default software)."""
    _check_txid(txid)
    attrs = _attr(ATTR_SOFTWARE, software)
    length = len(attrs) + 8  # the FINGERPRINT attribute is counted before the CRC
    head = struct.pack("!HH", BINDING_REQUEST, length) + MAGIC_COOKIE + txid
    body = head + attrs
    return body + struct.pack("!HHI", ATTR_FINGERPRINT, 4, _fingerprint(body))


def _xor_address(addr: IPAddress, port: int, txid: bytes) -> bytes:
    key = MAGIC_COOKIE + txid
    raw = addr.packed
    fam = FAMILY_IPV4 if addr.version == 4 else FAMILY_IPV6
    xored = bytes(b ^ k for b, k in zip(raw, key, strict=False))
    return struct.pack("!BBH", 0, fam, port ^ 0x2112) + xored


def response(txid: bytes, addr: IPAddress, port: int) -> bytes:
    """A Binding Success Response reflecting addr:port (IPv4-mapped IPv6 is unmapped)."""
    _check_txid(txid)
    if not 0 <= port <= 0xFFFF:
        raise ValueError("port out of range")
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    attrs = _attr(ATTR_XOR_MAPPED_ADDRESS, _xor_address(addr, port, txid))
    return struct.pack("!HH", BINDING_SUCCESS, len(attrs)) + MAGIC_COOKIE + txid + attrs


def is_stun(data: bytes | bytearray | memoryview) -> bool:
    """Tailscale's cheap test: 20+ bytes, top two bits zero, magic cookie at offset 4."""
    return len(data) >= HEADER_LEN and data[0] & 0xC0 == 0 and bytes(data[4:8]) == MAGIC_COOKIE


def _header(data: bytes) -> tuple[int, bytes, list[tuple[int, int, bytes]]]:
    """(type, txid, [(type, offset, value)]) for a well-formed STUN message."""
    if not is_stun(data):
        raise ParseError("not a STUN message")
    typ, length = struct.unpack_from("!HH", data, 0)
    if length % 4 or HEADER_LEN + length > len(data):
        raise ParseError("bad STUN length")
    attrs: list[tuple[int, int, bytes]] = []
    off = HEADER_LEN
    end = HEADER_LEN + length  # trailing bytes beyond the header length are ignored
    while off < end:  # both are multiples of 4, so an attribute header always fits
        atype, alen = struct.unpack_from("!HH", data, off)
        if off + 4 + alen > end:
            raise ParseError("truncated STUN attribute")
        attrs.append((atype, off, data[off + 4 : off + 4 + alen]))
        off += 4 + alen + ((-alen) % 4)
    return typ, data[8:20], attrs


def parse_request(data: bytes | bytearray | memoryview, *, require_tailnode: bool = False) -> bytes:
    """Validate a Binding Request and return its transaction ID.

    A FINGERPRINT, when present, must be the last attribute and must match. With
    ``require_tailnode`` the Tailscale server rules apply: SOFTWARE "tailnode" and a
    FINGERPRINT are mandatory.
    """
    data = bytes(data)
    typ, txid, attrs = _header(data)
    if typ != BINDING_REQUEST:
        raise ParseError("not a STUN binding request")
    software = None
    fingerprinted = False
    for i, (atype, off, value) in enumerate(attrs):
        if atype == ATTR_SOFTWARE:
            software = value
        elif atype == ATTR_FINGERPRINT:
            if i != len(attrs) - 1 or len(value) != 4:
                raise ParseError("FINGERPRINT must be the last attribute, 4 bytes")
            # The CRC covers the message up to the attribute, with the header length as sent.
            if struct.unpack("!I", value)[0] != _fingerprint(data[:off]):
                raise ParseError("STUN FINGERPRINT mismatch")
            fingerprinted = True
    if require_tailnode and (software != SOFTWARE or not fingerprinted):
        raise ParseError("not a Tailscale STUN request")
    return txid


def _parse_address(value: bytes, xor_key: bytes | None) -> tuple[IPAddress, int]:
    if len(value) < 4:
        raise ParseError("short STUN address attribute")
    family = value[1]
    port = struct.unpack_from("!H", value, 2)[0]
    want = {FAMILY_IPV4: 4, FAMILY_IPV6: 16}.get(family)
    if want is None or len(value) != 4 + want:
        raise ParseError("bad STUN address family or length")
    raw = value[4:]
    if xor_key is not None:
        port ^= 0x2112
        raw = bytes(b ^ k for b, k in zip(raw, xor_key, strict=False))
    addr: IPAddress = ipaddress.ip_address(raw)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped  # a dual-stack server reports IPv4 clients mapped
    return addr, port


def parse_response(data: bytes | bytearray | memoryview) -> STUNResponse:
    """Parse a Binding Success Response: XOR-MAPPED-ADDRESS wins over MAPPED-ADDRESS."""
    data = bytes(data)
    typ, txid, attrs = _header(data)
    if typ != BINDING_SUCCESS:
        raise ParseError("not a STUN binding success response")
    xor_found: tuple[IPAddress, int] | None = None
    plain: tuple[IPAddress, int] | None = None
    for atype, _, value in attrs:
        if atype in (ATTR_XOR_MAPPED_ADDRESS, ATTR_XOR_MAPPED_ADDRESS_ALT) and xor_found is None:
            xor_found = _parse_address(value, MAGIC_COOKIE + txid)
        elif atype == ATTR_MAPPED_ADDRESS and plain is None:
            plain = _parse_address(value, None)
    found = xor_found or plain
    if found is None:
        raise ParseError("STUN response without a mapped address")
    return STUNResponse(txid, found[0], found[1])
