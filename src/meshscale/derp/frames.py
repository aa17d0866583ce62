"""DERP frames: types, encoders, a bounded FrameBuffer and the payload decoder.

Every frame (docs/protocol/derp-disco-stun.md §1.4)::

    | type (1) | length (u32 BE, payload only) | payload |

Keys in frames are 32 raw bytes here (hot path); drivers wrap them in ``NodePublic`` at their
edges. Decoding raises only ``FrameError``. Unknown frame types decode to ``Unknown`` and must
be skipped, never treated as an error (1.5).
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Generator
from dataclasses import dataclass
from enum import IntEnum

from .errors import FrameError, LocalDERPError

# ProtocolVersion history: 1 = RecvPacket without the source key (obsolete, 0 on the wire);
# 2 = RecvPacket carries the 32-byte source key. We only speak 2.
PROTOCOL_VERSION = 2
MAGIC = b"DERP" + "\U0001f511".encode()  # 8 bytes: 44 45 52 50 f0 9f 94 91
FRAME_HEADER_LEN = 5  # bytes
KEY_LEN = 32  # bytes
NONCE_LEN = 24  # bytes
MAX_PACKET_SIZE = 64 << 10  # bytes: the largest relayed packet (MaxPacketSize)
MAX_INFO_LEN = 1 << 20  # bytes: ServerInfo JSON bound on the client
MAX_CLIENT_INFO_LEN = 256 << 10  # bytes: the ClientInfo frame bound on the server
MAX_PING_LEN = 1000  # bytes: derper closes on longer pings
# FrameBuffer bounds, each stopping memory exhaustion by one announced huge frame:
# the server never needs more than a ForwardPacket (two keys and a packet) after login,
# and the ClientInfo bound during login; the client never reads more than ServerInfo.
MAX_SERVER_FRAME = 2 * KEY_LEN + MAX_PACKET_SIZE  # bytes, after login
MAX_LOGIN_FRAME = MAX_CLIENT_INFO_LEN  # bytes, before login
MAX_CLIENT_FRAME = NONCE_LEN + MAX_INFO_LEN  # bytes
KEEP_ALIVE = 60.0  # seconds between server KeepAlives (plus up to 5 s jitter)
KEEP_ALIVE_JITTER = 5.0  # seconds
CLIENT_READ_TIMEOUT = 120.0  # seconds of silence after which a client gives up
DISCO_MAGIC = b"TS" + "\U0001f4ac".encode()  # 6 bytes: 54 53 f0 9f 92 ac
DISCO_MIN_LEN = len(DISCO_MAGIC) + KEY_LEN + NONCE_LEN  # 62 bytes


class FrameType(IntEnum):
    SERVER_KEY = 0x01
    CLIENT_INFO = 0x02
    SERVER_INFO = 0x03
    SEND_PACKET = 0x04
    RECV_PACKET = 0x05
    KEEP_ALIVE = 0x06
    NOTE_PREFERRED = 0x07
    PEER_GONE = 0x08
    PEER_PRESENT = 0x09
    FORWARD_PACKET = 0x0A
    WATCH_CONNS = 0x10
    CLOSE_PEER = 0x11
    PING = 0x12
    PONG = 0x13
    HEALTH = 0x14
    RESTARTING = 0x15


class PeerGoneReason(IntEnum):
    DISCONNECTED = 0x00
    NOT_HERE = 0x01
    MESH_CONN_BROKE = 0xF0  # never on the wire; invented by a mesh client


class PeerPresentFlags(IntEnum):
    IS_REGULAR = 0x01
    IS_MESH_PEER = 0x02
    IS_PROBER = 0x04
    NOT_IDEAL = 0x08


_HDR = struct.Struct("!BI")
HEADER = _HDR  # type (u8), payload length (u32 BE)


def header(ftype: int, length: int) -> bytes:
    return _HDR.pack(ftype, length)


def encode(ftype: int, payload: bytes = b"") -> bytes:
    return _HDR.pack(ftype, len(payload)) + payload


def looks_like_disco(packet: bytes | memoryview) -> bool:
    """The server's test for routing a packet to the disco queue (1.6)."""
    return len(packet) >= DISCO_MIN_LEN and packet[:6] == DISCO_MAGIC


def _key(k: bytes) -> bytes:
    if len(k) != KEY_LEN:
        raise LocalDERPError(f"DERP key must be {KEY_LEN} bytes")
    return k


def _packet(p: bytes) -> bytes:
    if len(p) > MAX_PACKET_SIZE:
        raise LocalDERPError(f"packet of {len(p)} bytes exceeds {MAX_PACKET_SIZE}")
    return p


def server_key(public: bytes) -> bytes:
    return encode(FrameType.SERVER_KEY, MAGIC + _key(public))


def send_packet(dst: bytes, packet: bytes) -> bytes:
    return encode(FrameType.SEND_PACKET, _key(dst) + _packet(packet))


def recv_packet_header(src: bytes, packet_len: int) -> bytes:
    """Header plus source key; the driver writes the packet after it without copying."""
    return _HDR.pack(FrameType.RECV_PACKET, KEY_LEN + packet_len) + src


def recv_packet(src: bytes, packet: bytes) -> bytes:
    return encode(FrameType.RECV_PACKET, _key(src) + _packet(packet))


def forward_packet(src: bytes, dst: bytes, packet: bytes) -> bytes:
    return encode(FrameType.FORWARD_PACKET, _key(src) + _key(dst) + _packet(packet))


def keep_alive() -> bytes:
    return encode(FrameType.KEEP_ALIVE)


def note_preferred(preferred: bool) -> bytes:
    return encode(FrameType.NOTE_PREFERRED, b"\x01" if preferred else b"\x00")


def peer_gone(key: bytes, reason: PeerGoneReason = PeerGoneReason.DISCONNECTED) -> bytes:
    return encode(FrameType.PEER_GONE, _key(key) + bytes([reason]))


def peer_present(
    key: bytes,
    addr: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int] | None,
    flags: int,
) -> bytes:
    """51 bytes: key, IP (IPv4 mapped into IPv6), port, flags."""
    if addr is None:
        ip16, port = bytes(16), 0
    else:
        ip, port = addr
        ip16 = (
            ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + ip.packed).packed
            if ip.version == 4
            else ip.packed
        )
    return encode(FrameType.PEER_PRESENT, _key(key) + ip16 + struct.pack("!HB", port, flags))


def watch_conns() -> bytes:
    return encode(FrameType.WATCH_CONNS)


def close_peer(key: bytes) -> bytes:
    return encode(FrameType.CLOSE_PEER, _key(key))


def ping(data: bytes) -> bytes:
    if len(data) != 8:
        raise LocalDERPError("ping payload must be 8 bytes")
    return encode(FrameType.PING, data)


def pong(data: bytes) -> bytes:
    if len(data) != 8:
        raise LocalDERPError("pong payload must be 8 bytes")
    return encode(FrameType.PONG, data)


def health(problem: str) -> bytes:
    return encode(FrameType.HEALTH, problem.encode())


def restarting(reconnect_in_ms: int, try_for_ms: int) -> bytes:
    return encode(FrameType.RESTARTING, struct.pack("!II", reconnect_in_ms, try_for_ms))


class FrameBuffer:
    """Reassembles frames from a byte stream; refuses any frame longer than ``max_frame``.

    ``feed`` bytes, then iterate ``frames()`` for complete ``(type, payload)`` pairs. The bound
    is checked on the header, before any payload is buffered, so one announced 4 GiB frame
    costs nothing. Raises ``FrameError`` on an oversized frame.
    """

    __slots__ = ("_buf", "_pos", "max_frame")

    def __init__(self, max_frame: int) -> None:
        self.max_frame = max_frame
        self._buf = bytearray()
        self._pos = 0

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        self._buf += data

    def __len__(self) -> int:
        return len(self._buf) - self._pos

    def take_pending(self) -> bytes:
        """The bytes fed but not yet returned as frames; the buffer is empty afterwards."""
        out = bytes(self._buf[self._pos :])
        self._buf = bytearray()
        self._pos = 0
        return out

    def frames(self) -> Generator[tuple[int, bytes], None, None]:
        """Complete frames; ``feed`` only between iterations, never during one."""
        buf = self._buf
        view = memoryview(buf)  # one copy per payload instead of two (slice, then bytes)
        try:
            while len(buf) - self._pos >= FRAME_HEADER_LEN:
                ftype, length = _HDR.unpack_from(buf, self._pos)
                if length > self.max_frame:
                    raise FrameError(
                        f"frame type {ftype:#x} of {length} bytes exceeds {self.max_frame}"
                    )
                start = self._pos + FRAME_HEADER_LEN
                end = start + length
                if end > len(buf):
                    return
                self._pos = end
                yield ftype, view[start:end].tobytes()
        finally:
            view.release()
            # Compact so the buffer never holds more than one partial frame.
            if self._pos:
                del buf[: self._pos]
                self._pos = 0


# ---- decoded frames -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ServerKey:
    key: bytes


@dataclass(frozen=True, slots=True)
class ClientInfoFrame:
    key: bytes
    sealed: bytes  # nonce || box


@dataclass(frozen=True, slots=True)
class ServerInfoFrame:
    sealed: bytes  # nonce || box


@dataclass(frozen=True, slots=True)
class SendPacket:
    dst: bytes
    packet: bytes


@dataclass(frozen=True, slots=True)
class RecvPacket:
    src: bytes
    packet: bytes


@dataclass(frozen=True, slots=True)
class KeepAlive:
    pass


@dataclass(frozen=True, slots=True)
class NotePreferred:
    preferred: bool


@dataclass(frozen=True, slots=True)
class PeerGone:
    key: bytes
    reason: int


@dataclass(frozen=True, slots=True)
class PeerPresent:
    key: bytes
    addr: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int] | None
    flags: int


@dataclass(frozen=True, slots=True)
class ForwardPacket:
    src: bytes
    dst: bytes
    packet: bytes


@dataclass(frozen=True, slots=True)
class WatchConns:
    pass


@dataclass(frozen=True, slots=True)
class ClosePeer:
    key: bytes


@dataclass(frozen=True, slots=True)
class Ping:
    data: bytes


@dataclass(frozen=True, slots=True)
class Pong:
    data: bytes


@dataclass(frozen=True, slots=True)
class Health:
    problem: str


@dataclass(frozen=True, slots=True)
class Restarting:
    reconnect_in_ms: int
    try_for_ms: int


@dataclass(frozen=True, slots=True)
class Unknown:
    ftype: int
    payload: bytes


Frame = (
    ServerKey
    | ClientInfoFrame
    | ServerInfoFrame
    | SendPacket
    | RecvPacket
    | KeepAlive
    | NotePreferred
    | PeerGone
    | PeerPresent
    | ForwardPacket
    | WatchConns
    | ClosePeer
    | Ping
    | Pong
    | Health
    | Restarting
    | Unknown
)


def _need(cond: bool, what: str) -> None:
    if not cond:
        raise FrameError(what)


def decode(ftype: int, p: bytes) -> Frame:
    """Decode one frame payload. Length rules follow derper and the official client (1.5)."""
    n = len(p)
    if ftype == FrameType.SEND_PACKET:
        _need(KEY_LEN <= n <= KEY_LEN + MAX_PACKET_SIZE, "bad SendPacket length")
        return SendPacket(p[:KEY_LEN], p[KEY_LEN:])
    if ftype == FrameType.RECV_PACKET:
        _need(KEY_LEN <= n <= KEY_LEN + MAX_PACKET_SIZE, "bad RecvPacket length")
        return RecvPacket(p[:KEY_LEN], p[KEY_LEN:])
    if ftype == FrameType.FORWARD_PACKET:
        _need(2 * KEY_LEN <= n <= 2 * KEY_LEN + MAX_PACKET_SIZE, "bad ForwardPacket length")
        return ForwardPacket(p[:KEY_LEN], p[KEY_LEN : 2 * KEY_LEN], p[2 * KEY_LEN :])
    if ftype == FrameType.KEEP_ALIVE:
        return KeepAlive()
    if ftype == FrameType.PING:
        _need(8 <= n <= MAX_PING_LEN, "bad Ping length")
        return Ping(p[:8])
    if ftype == FrameType.PONG:
        _need(n >= 8, "short Pong")
        return Pong(p[:8])
    if ftype == FrameType.NOTE_PREFERRED:
        _need(n == 1, "NotePreferred must be 1 byte")
        return NotePreferred(p[0] != 0)
    if ftype == FrameType.PEER_GONE:
        _need(n >= KEY_LEN, "short PeerGone")
        return PeerGone(p[:KEY_LEN], p[KEY_LEN] if n > KEY_LEN else PeerGoneReason.DISCONNECTED)
    if ftype == FrameType.PEER_PRESENT:
        return _decode_peer_present(p)
    if ftype == FrameType.SERVER_KEY:
        _need(n >= len(MAGIC) + KEY_LEN and p[:8] == MAGIC, "bad ServerKey")
        return ServerKey(p[8 : 8 + KEY_LEN])
    if ftype == FrameType.CLIENT_INFO:
        _need(KEY_LEN + NONCE_LEN <= n <= MAX_CLIENT_INFO_LEN, "bad ClientInfo length")
        return ClientInfoFrame(p[:KEY_LEN], p[KEY_LEN:])
    if ftype == FrameType.SERVER_INFO:
        _need(NONCE_LEN <= n <= NONCE_LEN + MAX_INFO_LEN, "bad ServerInfo length")
        return ServerInfoFrame(p)
    if ftype == FrameType.WATCH_CONNS:
        _need(n == 0, "WatchConns must be empty")
        return WatchConns()
    if ftype == FrameType.CLOSE_PEER:
        _need(n == KEY_LEN, "ClosePeer must be 32 bytes")
        return ClosePeer(p)
    if ftype == FrameType.HEALTH:
        return Health(p.decode("utf-8", "replace"))
    if ftype == FrameType.RESTARTING:
        _need(n >= 8, "short Restarting")
        a, b = struct.unpack_from("!II", p)
        return Restarting(a, b)
    return Unknown(ftype, p)


def _decode_peer_present(p: bytes) -> PeerPresent:
    n = len(p)
    _need(n == KEY_LEN or n >= KEY_LEN + 18, "bad PeerPresent length")
    if n == KEY_LEN:
        return PeerPresent(p, None, 0)
    ip6 = ipaddress.IPv6Address(p[32:48])
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address = ip6.ipv4_mapped or ip6
    port = struct.unpack_from("!H", p, 48)[0]
    flags = p[50] if n > 50 else 0
    return PeerPresent(p[:KEY_LEN], (ip, port), flags)
