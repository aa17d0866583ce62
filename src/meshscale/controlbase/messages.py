"""controlbase wire frames (tailscale control/controlbase/messages.go).

Every frame starts with a type byte and a big-endian u16 payload length; the initiation
alone is preceded by the client's u16 protocol version::

    initiation  u16 version | 0x01 | u16 96 | e_pub[32] | enc(s_pub)[48] | tag[16]   101 bytes
    response    0x02 | u16 48 | e_pub[32] | tag[16]                                     51 bytes
    error       0x03 | u16 n  | n bytes UTF-8 (unauthenticated)
    record      0x04 | u16 n  | n bytes ChaCha20-Poly1305 ciphertext (plaintext + 16-byte tag)

A frame is at most MAX_MESSAGE_SIZE bytes including its header (docs/protocol/control.md §2.4).

Error tree::

    ControlBaseError (ValueError)
     +-- ParseError          the peer sent bytes that are not a valid frame
     +-- HandshakeError      the peer's handshake failed authentication or was refused
     +-- RecordError         a record failed to decrypt (fatal for the connection)
     +-- LocalProtocolError  we misused the API (wrong state, cipher exhausted)
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

MAX_MESSAGE_SIZE = 4096  # bytes, header included; larger frames kill the connection
HEADER_LEN = 3  # bytes: type + u16 length
INITIATION_HEADER_LEN = 5  # bytes: u16 version + type + u16 length
TAG_LEN = 16  # bytes, Poly1305 tag
KEY_LEN = 32  # bytes, Curve25519 point
MAX_CIPHERTEXT_SIZE = MAX_MESSAGE_SIZE - HEADER_LEN  # 4093 bytes
MAX_PLAINTEXT_SIZE = MAX_CIPHERTEXT_SIZE - TAG_LEN  # 4077 bytes per record

INITIATION_PAYLOAD_LEN = KEY_LEN + KEY_LEN + TAG_LEN + TAG_LEN  # 96 bytes
INITIATION_LEN = INITIATION_HEADER_LEN + INITIATION_PAYLOAD_LEN  # 101 bytes
RESPONSE_PAYLOAD_LEN = KEY_LEN + TAG_LEN  # 48 bytes
RESPONSE_LEN = HEADER_LEN + RESPONSE_PAYLOAD_LEN  # 51 bytes


class MessageType(IntEnum):
    INITIATION = 1
    RESPONSE = 2
    ERROR = 3
    RECORD = 4


class ControlBaseError(ValueError):
    """Base of every controlbase error."""


class ParseError(ControlBaseError):
    """The peer sent bytes that are not a valid controlbase frame."""


class HandshakeError(ControlBaseError):
    """The Noise handshake failed (bad tag, bad key, or an error frame from the server)."""


class RecordError(ControlBaseError):
    """A transport record failed to decrypt; the connection must be dropped."""


class LocalProtocolError(ControlBaseError):
    """The caller used the API wrongly (for example, wrote before the handshake finished)."""


@dataclass(frozen=True, slots=True)
class Initiation:
    """A parsed client initiation."""

    version: int
    ephemeral: bytes  # 32 bytes, clear
    machine_key_sealed: bytes  # 48 bytes
    tag: bytes  # 16 bytes

    def encode(self) -> bytes:
        return (
            struct.pack(">HBH", self.version, MessageType.INITIATION, INITIATION_PAYLOAD_LEN)
            + self.ephemeral
            + self.machine_key_sealed
            + self.tag
        )


@dataclass(frozen=True, slots=True)
class Response:
    ephemeral: bytes  # 32 bytes
    tag: bytes  # 16 bytes

    def encode(self) -> bytes:
        return (
            struct.pack(">BH", MessageType.RESPONSE, RESPONSE_PAYLOAD_LEN)
            + self.ephemeral
            + self.tag
        )


def parse_initiation(data: bytes) -> Initiation:
    """Parse the 101-byte initiation (as sent in the X-Tailscale-Handshake header)."""
    if len(data) != INITIATION_LEN:
        raise ParseError(f"initiation: want {INITIATION_LEN} bytes, got {len(data)}")
    version, mtype, length = struct.unpack_from(">HBH", data)
    if mtype != MessageType.INITIATION:
        raise ParseError(f"initiation: unexpected message type {mtype}")
    if length != INITIATION_PAYLOAD_LEN:
        raise ParseError(f"initiation: bad payload length {length}")
    return Initiation(version, data[5:37], data[37:85], data[85:101])


def parse_response(data: bytes) -> Response:
    """Parse the server's 51-byte response frame; an error frame raises HandshakeError."""
    if len(data) < HEADER_LEN:
        raise ParseError("response: short header")
    mtype, length = struct.unpack_from(">BH", data)
    if mtype == MessageType.ERROR:
        msg = data[HEADER_LEN : HEADER_LEN + length].decode("utf-8", "replace")
        raise HandshakeError(f"server error: {msg!r}")
    if mtype != MessageType.RESPONSE:
        raise ParseError(f"response: unexpected message type {mtype}")
    if length != RESPONSE_PAYLOAD_LEN or len(data) != RESPONSE_LEN:
        raise ParseError(f"response: bad length {length}/{len(data)}")
    return Response(data[3:35], data[35:51])


def encode_error(message: str) -> bytes:
    """An error frame, sent instead of the response to refuse a handshake."""
    body = message.encode()[: MAX_MESSAGE_SIZE - HEADER_LEN]
    return struct.pack(">BH", MessageType.ERROR, len(body)) + body


def encode_record_header(ciphertext_len: int) -> bytes:
    if ciphertext_len > MAX_CIPHERTEXT_SIZE:
        raise LocalProtocolError("record too large")
    return struct.pack(">BH", MessageType.RECORD, ciphertext_len)


class FrameBuffer:
    """Splits a byte stream into complete frames (3-byte header). Performs no crypto.

    Driven by: ``feed`` with stream bytes; ``frames`` yields (type, payload) pairs.
    Holds at most one partial frame, so memory is bounded by MAX_MESSAGE_SIZE.
    """

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        self._buf += data

    def next_frame(self) -> tuple[int, bytes] | None:
        """Return the next complete frame, or None if more bytes are needed."""
        if len(self._buf) < HEADER_LEN:
            return None
        mtype = self._buf[0]
        length = (self._buf[1] << 8) | self._buf[2]
        if HEADER_LEN + length > MAX_MESSAGE_SIZE:
            raise ParseError(f"frame of {HEADER_LEN + length} bytes exceeds {MAX_MESSAGE_SIZE}")
        if mtype not in (MessageType.RESPONSE, MessageType.ERROR, MessageType.RECORD):
            raise ParseError(f"unexpected frame type {mtype}")
        if len(self._buf) < HEADER_LEN + length:
            return None
        payload = bytes(self._buf[HEADER_LEN : HEADER_LEN + length])
        del self._buf[: HEADER_LEN + length]
        return mtype, payload
