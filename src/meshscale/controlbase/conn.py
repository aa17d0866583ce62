"""ts2021 record layer: a sans-IO encrypted byte stream (tailscale control/controlbase/conn.go).

Driven by: ``receive_data`` with bytes from the socket and ``send`` with plaintext from the
application. ``send`` returns wire bytes; ``receive_data`` returns decrypted plaintext.

Records carry at most MAX_PLAINTEXT_SIZE (4077) bytes of plaintext. The nonce is 4 zero
bytes followed by a **big-endian** u64 counter per direction (docs/protocol/control.md §2.4): this
is where ts2021 departs from the Noise specification, which is little-endian. AD is empty.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from meshscale.key import MachinePublic

from .handshake import ClientHandshake
from .messages import (
    HEADER_LEN,
    MAX_PLAINTEXT_SIZE,
    RESPONSE_LEN,
    FrameBuffer,
    LocalProtocolError,
    MessageType,
    ParseError,
    RecordError,
    encode_record_header,
    parse_response,
)

INVALID_NONCE = 2**64 - 1  # the last counter value is never used ("cipher exhausted")


class CipherState:
    """One direction's ChaCha20-Poly1305 key and big-endian nonce counter."""

    __slots__ = ("_aead", "_n")

    def __init__(self, key: bytes) -> None:
        self._aead = ChaCha20Poly1305(key)
        self._n = 0

    def _nonce(self) -> bytes:
        if self._n >= INVALID_NONCE:
            raise LocalProtocolError("cipher exhausted")
        nonce = b"\x00\x00\x00\x00" + self._n.to_bytes(8, "big")
        self._n += 1
        return nonce

    def encrypt(self, plaintext: bytes | bytearray | memoryview) -> bytes:
        return self._aead.encrypt(self._nonce(), plaintext, None)

    def decrypt(self, ciphertext: bytes) -> bytes:
        try:
            return self._aead.decrypt(self._nonce(), ciphertext, None)
        except InvalidTag as exc:
            raise RecordError("record failed to decrypt") from exc


class Conn:
    """An established controlbase connection (either side).

    ``peer`` is the remote static key: for a server, the Noise-authenticated machine key.
    """

    def __init__(
        self, send_key: bytes, receive_key: bytes, peer: MachinePublic, version: int
    ) -> None:
        self.peer = peer
        self.version = version
        self._tx = CipherState(send_key)
        self._rx = CipherState(receive_key)
        self._frames = FrameBuffer()
        self.records_received = 0
        self.records_sent = 0

    def send(self, data: bytes | bytearray | memoryview) -> bytes:
        """Encrypt ``data`` into as many records as needed; returns the wire bytes."""
        if 0 < len(data) <= MAX_PLAINTEXT_SIZE:  # one record (a map delta): no buffer, no view
            ct = self._tx.encrypt(data)
            self.records_sent += 1
            return encode_record_header(len(ct)) + ct
        view = memoryview(data)
        out = bytearray()
        for off in range(0, len(view), MAX_PLAINTEXT_SIZE):
            ct = self._tx.encrypt(view[off : off + MAX_PLAINTEXT_SIZE])
            out += encode_record_header(len(ct))
            out += ct
            self.records_sent += 1
        return bytes(out)

    def receive_data(self, data: bytes | bytearray | memoryview) -> bytes:
        """Feed wire bytes; returns all plaintext that became available (may be empty).

        Raises ParseError on a malformed frame and RecordError on a bad record; both are
        fatal for the connection.
        """
        self._frames.feed(data)
        out = bytearray()
        while (frame := self._frames.next_frame()) is not None:
            mtype, payload = frame
            if mtype != MessageType.RECORD:
                raise ParseError(f"unexpected frame type {mtype} after the handshake")
            out += self._rx.decrypt(payload)
            self.records_received += 1
        return bytes(out)


class ClientConn:
    """Client side from first byte to established connection.

    Send ``initiation`` (in the upgrade header); feed everything the server sends after the
    101 to ``receive_data``. ``conn`` becomes non-None once the response is processed.
    """

    def __init__(self, handshake: ClientHandshake, control_key: MachinePublic) -> None:
        self._hs = handshake
        self._control_key = control_key
        self.initiation = handshake.initiation
        self._pre = bytearray()
        self.conn: Conn | None = None

    def receive_data(self, data: bytes | bytearray | memoryview) -> bytes:
        """Feed bytes from the server; returns decrypted plaintext once established."""
        if self.conn is not None:
            return self.conn.receive_data(data)
        self._pre += data
        if len(self._pre) < HEADER_LEN:
            return b""
        if self._pre[0] == MessageType.ERROR:
            length = (self._pre[1] << 8) | self._pre[2]
            if len(self._pre) < HEADER_LEN + length:
                return b""
            parse_response(bytes(self._pre[: HEADER_LEN + length]))  # raises HandshakeError
        if len(self._pre) < RESPONSE_LEN:
            return b""
        send_key, recv_key = self._hs.receive_response(bytes(self._pre[:RESPONSE_LEN]))
        self.conn = Conn(send_key, recv_key, self._control_key, self._hs.version)
        leftover = bytes(self._pre[RESPONSE_LEN:])
        self._pre.clear()
        return self.conn.receive_data(leftover)
