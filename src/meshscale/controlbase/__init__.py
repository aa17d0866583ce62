"""ts2021 Noise IK handshake and record framing (tailscale control/controlbase). Sans-IO."""

from .conn import CipherState, ClientConn, Conn
from .early import EARLY_PAYLOAD_MAGIC, EarlyPayloadReader, encode_early_payload
from .handshake import PROTOCOL_NAME, ClientHandshake, hkdf2, prologue, server_accept
from .messages import (
    INITIATION_LEN,
    MAX_MESSAGE_SIZE,
    MAX_PLAINTEXT_SIZE,
    RESPONSE_LEN,
    ControlBaseError,
    FrameBuffer,
    HandshakeError,
    LocalProtocolError,
    MessageType,
    ParseError,
    RecordError,
    encode_error,
    parse_initiation,
    parse_response,
)

__all__ = [
    "EARLY_PAYLOAD_MAGIC",
    "INITIATION_LEN",
    "MAX_MESSAGE_SIZE",
    "MAX_PLAINTEXT_SIZE",
    "PROTOCOL_NAME",
    "RESPONSE_LEN",
    "CipherState",
    "ClientConn",
    "ClientHandshake",
    "Conn",
    "ControlBaseError",
    "EarlyPayloadReader",
    "FrameBuffer",
    "HandshakeError",
    "LocalProtocolError",
    "MessageType",
    "ParseError",
    "RecordError",
    "encode_early_payload",
    "encode_error",
    "hkdf2",
    "parse_initiation",
    "parse_response",
    "prologue",
    "server_accept",
]
