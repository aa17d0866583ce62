"""WireGuard wire messages: layouts, builders and parsers (docs/protocol/wireguard.md §2).

All integers are little-endian; the first four bytes are read as one u32 type, so non-zero
reserved bytes make an unknown type.

    initiation (148)  type=1 | sender u32 | ephemeral 32 | static 32+16 | timestamp 12+16
                      | mac1 16 | mac2 16
    response    (92)  type=2 | sender u32 | receiver u32 | ephemeral 32 | empty 0+16
                      | mac1 16 | mac2 16
    cookie      (64)  type=3 | receiver u32 | nonce 24 | cookie 16+16
    transport (>=32)  type=4 | receiver u32 | counter u64 | AEAD(padded packet)
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .constants import (
    COOKIE_REPLY_SIZE,
    INITIATION_SIZE,
    MESSAGE_COOKIE_REPLY,
    MESSAGE_INITIATION,
    MESSAGE_RESPONSE,
    MESSAGE_TRANSPORT,
    MIN_TRANSPORT_SIZE,
    RESPONSE_SIZE,
)


class ParseError(ValueError):
    """A datagram is not a well-formed WireGuard message."""


_TYPE = struct.Struct("<I")
_INITIATION = struct.Struct("<II32s48s28s16s16s")
_RESPONSE = struct.Struct("<III32s16s16s16s")
_COOKIE = struct.Struct("<II24s32s")
TRANSPORT_HEADER = struct.Struct("<IIQ")

INITIATION_MAC1_OFFSET = 116
INITIATION_MAC2_OFFSET = 132
RESPONSE_MAC1_OFFSET = 60
RESPONSE_MAC2_OFFSET = 76


@dataclass(frozen=True, slots=True)
class Initiation:
    sender: int
    ephemeral: bytes
    encrypted_static: bytes
    encrypted_timestamp: bytes
    mac1: bytes
    mac2: bytes

    def pack_body(self) -> bytes:
        """The message up to (not including) mac1."""
        return _INITIATION.pack(
            MESSAGE_INITIATION,
            self.sender,
            self.ephemeral,
            self.encrypted_static,
            self.encrypted_timestamp,
            b"",
            b"",
        )[:INITIATION_MAC1_OFFSET]


@dataclass(frozen=True, slots=True)
class Response:
    sender: int
    receiver: int
    ephemeral: bytes
    encrypted_nothing: bytes
    mac1: bytes
    mac2: bytes

    def pack_body(self) -> bytes:
        return _RESPONSE.pack(
            MESSAGE_RESPONSE,
            self.sender,
            self.receiver,
            self.ephemeral,
            self.encrypted_nothing,
            b"",
            b"",
        )[:RESPONSE_MAC1_OFFSET]


@dataclass(frozen=True, slots=True)
class CookieReply:
    receiver: int
    nonce: bytes
    encrypted_cookie: bytes

    def pack(self) -> bytes:
        return _COOKIE.pack(MESSAGE_COOKIE_REPLY, self.receiver, self.nonce, self.encrypted_cookie)


def message_type(data: bytes | memoryview) -> int:
    """The u32 type of a datagram, or 0 if it is too short to have one."""
    if len(data) < 4:
        return 0
    return int(_TYPE.unpack_from(data)[0])


def parse_initiation(data: bytes | memoryview) -> Initiation:
    if len(data) != INITIATION_SIZE:
        raise ParseError(f"initiation must be {INITIATION_SIZE} bytes, got {len(data)}")
    t, sender, eph, static, ts, mac1, mac2 = _INITIATION.unpack(data)
    if t != MESSAGE_INITIATION:
        raise ParseError("not an initiation")
    return Initiation(sender, eph, static, ts, mac1, mac2)


def parse_response(data: bytes | memoryview) -> Response:
    if len(data) != RESPONSE_SIZE:
        raise ParseError(f"response must be {RESPONSE_SIZE} bytes, got {len(data)}")
    t, sender, receiver, eph, empty, mac1, mac2 = _RESPONSE.unpack(data)
    if t != MESSAGE_RESPONSE:
        raise ParseError("not a response")
    return Response(sender, receiver, eph, empty, mac1, mac2)


def parse_cookie_reply(data: bytes | memoryview) -> CookieReply:
    if len(data) != COOKIE_REPLY_SIZE:
        raise ParseError(f"cookie reply must be {COOKIE_REPLY_SIZE} bytes, got {len(data)}")
    t, receiver, nonce, cookie = _COOKIE.unpack(data)
    if t != MESSAGE_COOKIE_REPLY:
        raise ParseError("not a cookie reply")
    return CookieReply(receiver, nonce, cookie)


def parse_transport_header(data: bytes | memoryview) -> tuple[int, int]:
    """(receiver index, counter) of a transport message."""
    if len(data) < MIN_TRANSPORT_SIZE:
        raise ParseError("transport message shorter than 32 bytes")
    t, receiver, counter = TRANSPORT_HEADER.unpack_from(data)
    if t != MESSAGE_TRANSPORT:
        raise ParseError("not a transport message")
    return int(receiver), int(counter)
