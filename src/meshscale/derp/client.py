"""DERP client session core: login, then frames in and events out. Performs no I/O.

Driven by: bytes read from the upgraded stream (``receive_data``) and user calls
(``send_packet``, ``note_preferred``, ``ping``, ...). Randomness (box nonces) comes from the
``rand`` callable given at construction. Output: ``data_to_send()`` and ``next_event()``.

Theory of operation (docs/protocol/derp-disco-stun.md §1.4)::

    AWAIT_SERVER_KEY --ServerKey/send ClientInfo--> AWAIT_SERVER_INFO --ServerInfo--> CONNECTED
    (fast start: the server key is known up front, ClientInfo is sent at once and the
    ServerKey frame that still arrives is ignored)

User frames queued before ClientInfo has been sent wait until it is, because the server reads
ClientInfo first. Any protocol violation raises ``RemoteDERPError``; the session is then dead.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum, auto

from ..key import NodePrivate, NodePublic
from . import frames as F
from .errors import HandshakeError, LocalDERPError, RemoteDERPError
from .info import ClientInfo, ServerInfo, client_info_payload, open_server_info

Rand = Callable[[int], bytes]


class ClientState(Enum):
    AWAIT_SERVER_KEY = auto()
    AWAIT_SERVER_INFO = auto()
    CONNECTED = auto()
    CLOSED = auto()


@dataclass(frozen=True, slots=True)
class Connected:
    server_key: NodePublic
    info: ServerInfo


ClientEvent = (
    Connected | F.RecvPacket | F.PeerGone | F.PeerPresent | F.Pong | F.Health | F.Restarting
)


class ClientSession:
    """One DERP login and its steady state, from the client's side."""

    def __init__(
        self,
        private: NodePrivate,
        rand: Rand,
        *,
        info: ClientInfo | None = None,
        server_key: NodePublic | None = None,
    ) -> None:
        """
        :param private: our node key (the DERP identity).
        :param rand: ``rand(n) -> n random bytes`` for box nonces.
        :param info: the ClientInfo to send (mesh key, prober flag).
        :param server_key: known server key for fast start (from the meta certificate).
        """
        self.private = private
        self.public = private.public()
        self.info = info or ClientInfo()
        self._rand = rand
        self._buf = F.FrameBuffer(F.MAX_CLIENT_FRAME)
        self._out: list[bytes] = []
        self._pending: list[bytes] = []
        self._events: deque[ClientEvent] = deque()
        self.server_key: NodePublic | None = None
        self.server_info: ServerInfo | None = None
        self.state = ClientState.AWAIT_SERVER_KEY
        self._fast_start = server_key is not None
        if server_key is not None:
            self._send_client_info(server_key)

    # ---- inputs -------------------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Feed bytes read from the connection; raises RemoteDERPError on a violation."""
        if self.state is ClientState.CLOSED:
            return
        self._buf.feed(data)
        try:
            for ftype, payload in self._buf.frames():
                self._handle(ftype, payload)
        except RemoteDERPError:
            self.state = ClientState.CLOSED
            raise

    def _handle(self, ftype: int, payload: bytes) -> None:
        frame = F.decode(ftype, payload)
        if self.state is ClientState.AWAIT_SERVER_KEY:
            if not isinstance(frame, F.ServerKey):
                raise HandshakeError("first frame is not ServerKey")
            self._send_client_info(NodePublic(frame.key))
            return
        if isinstance(frame, F.ServerKey):
            if self._fast_start:
                return  # the key came from the certificate; the frame is redundant
            raise HandshakeError("unexpected second ServerKey")
        if self.state is ClientState.AWAIT_SERVER_INFO:
            if not isinstance(frame, F.ServerInfoFrame):
                raise HandshakeError(f"expected ServerInfo, got frame type {ftype:#x}")
            assert self.server_key is not None
            self.server_info = open_server_info(self.private, self.server_key.raw, frame.sealed)
            self.state = ClientState.CONNECTED
            self._events.append(Connected(self.server_key, self.server_info))
            return
        match frame:
            case F.RecvPacket() | F.PeerGone() | F.PeerPresent() | F.Pong() | F.Health():
                self._events.append(frame)
            case F.Restarting():
                self._events.append(frame)
            case F.Ping(data):
                self._out.append(F.pong(data))  # CanAckPings: answer server pings
            case F.ServerInfoFrame():
                raise HandshakeError("unexpected second ServerInfo")
            case _:
                pass  # KeepAlive, unknown types and server-only frames are ignored

    def _send_client_info(self, server_key: NodePublic) -> None:
        self.server_key = server_key
        payload = client_info_payload(self.private, server_key.raw, self.info, self._rand(24))
        self._out.append(F.encode(F.FrameType.CLIENT_INFO, payload))
        self._out.extend(self._pending)
        self._pending.clear()
        self.state = ClientState.AWAIT_SERVER_INFO

    # ---- user calls ---------------------------------------------------------------------

    def _queue(self, frame: bytes) -> None:
        if self.state is ClientState.CLOSED:
            raise LocalDERPError("DERP session is closed")
        if self.state is ClientState.AWAIT_SERVER_KEY:
            self._pending.append(frame)
        else:
            self._out.append(frame)

    def send_packet(self, dst: NodePublic | bytes, packet: bytes) -> None:
        """Queue a packet for ``dst``; raises LocalDERPError above MAX_PACKET_SIZE."""
        self._queue(F.send_packet(dst.raw if isinstance(dst, NodePublic) else dst, packet))

    def note_preferred(self, preferred: bool) -> None:
        self._queue(F.note_preferred(preferred))

    def ping(self, data: bytes) -> None:
        self._queue(F.ping(data))

    def watch_conns(self) -> None:
        """Mesh only: ask for PeerPresent/PeerGone about every client of the server."""
        self._queue(F.watch_conns())

    def close_peer(self, key: NodePublic) -> None:
        self._queue(F.close_peer(key.raw))

    def forward_packet(self, src: bytes, dst: bytes, packet: bytes) -> None:
        """Mesh only: hand a packet from ``src`` to the server's local client ``dst``."""
        self._queue(F.forward_packet(src, dst, packet))

    def close(self) -> None:
        self.state = ClientState.CLOSED

    # ---- outputs ------------------------------------------------------------------------

    def data_to_send(self) -> bytes:
        out = b"".join(self._out)
        self._out.clear()
        return out

    def next_event(self) -> ClientEvent | None:
        return self._events.popleft() if self._events else None

    @property
    def connected(self) -> bool:
        return self.state is ClientState.CONNECTED
