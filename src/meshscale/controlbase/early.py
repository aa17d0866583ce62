"""The optional early payload the server writes before HTTP/2 (tailscale control/ts2021/conn.go).

Inside the first Noise record(s)::

    "\\xff\\xff\\xffTS" | u32 big-endian N | N bytes JSON tailcfg.EarlyNoise

The client peeks at the first 9 plaintext bytes; an HTTP/2 frame header is also 9 bytes
and can never start with the magic, so the payload is unambiguous (docs/protocol/control.md §2.6).
"""

from __future__ import annotations

import struct

from .messages import ParseError

EARLY_PAYLOAD_MAGIC = b"\xff\xff\xffTS"
EARLY_HEADER_LEN = 9  # bytes: magic + u32 length
MAX_EARLY_PAYLOAD = 10 << 20  # bytes; the client refuses larger (memory exhaustion)


def encode_early_payload(json_body: bytes) -> bytes:
    return EARLY_PAYLOAD_MAGIC + struct.pack(">I", len(json_body)) + json_body


class EarlyPayloadReader:
    """Strips an early payload, if any, off the front of the decrypted stream.

    Feed plaintext to ``feed``; it returns the bytes that belong to HTTP/2 once the decision
    is made. ``payload`` holds the JSON body if one was present.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self.done = False
        self.payload: bytes | None = None

    def feed(self, data: bytes) -> bytes:
        if self.done:
            return data
        self._buf += data
        if len(self._buf) < EARLY_HEADER_LEN:
            return b""
        if bytes(self._buf[:5]) != EARLY_PAYLOAD_MAGIC:
            self.done = True
            out = bytes(self._buf)
            self._buf.clear()
            return out
        (n,) = struct.unpack_from(">I", self._buf, 5)
        if n > MAX_EARLY_PAYLOAD:
            raise ParseError(f"early payload of {n} bytes is too large")
        if len(self._buf) < EARLY_HEADER_LEN + n:
            return b""
        self.payload = bytes(self._buf[EARLY_HEADER_LEN : EARLY_HEADER_LEN + n])
        rest = bytes(self._buf[EARLY_HEADER_LEN + n :])
        self._buf.clear()
        self.done = True
        return rest
