"""The WireGuard device core: peers, handshakes, sessions and timers. Performs no I/O.

Driven by: datagrams from the bind, packets from the TUN, configuration calls, and the timer.

    encrypt_packets(packets, now)      TUN packets -> transport messages grouped by endpoint
    decrypt_transport(batch, now)      transport messages -> inner packets (+ handshake work)
    receive_handshake(data, ep, now)   initiation / response / cookie reply (control path)
    handle_timer(now) / get_timer()    retransmits, keepalives, rekeys, key zeroing
    datagrams_to_send()                handshake and keepalive datagrams produced above

Threading contract (the engine runs a TX thread, an RX thread and a control thread): the
data-path calls touch only per-keypair state that one side owns (send counter: an atomic
itertools.count; replay window: RX only). Everything that rotates keypair slots or indices
runs under the injected `lock`, which the driver makes a real lock; cores never import
threading. Time (`now`, monotonic seconds) and randomness (`rand(n) -> bytes`) come in.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

from . import noise
from .allowedips import AllowedIPs
from .constants import (
    DEFAULT_MTU,
    HANDSHAKE_INITIATION_RATE,
    INITIATION_SIZE,
    KEEPALIVE_TIMEOUT,
    MAX_PEERS,
    MAX_TIMER_HANDSHAKES,
    MESSAGE_COOKIE_REPLY,
    MESSAGE_INITIATION,
    MESSAGE_RESPONSE,
    REJECT_AFTER_MESSAGES,
    REJECT_AFTER_TIME,
    REKEY_AFTER_MESSAGES,
    REKEY_AFTER_TIME,
    REKEY_TIMEOUT,
    REKEY_TIMEOUT_JITTER_MAX,
    RESPONSE_SIZE,
    ZERO_KEY_MATERIAL_AFTER,
)
from .cookie import CookieChecker
from .crypto import DH, AuthenticationError, clamp, public_key
from .datapath import DataPath
from .messages import (
    ParseError,
    message_type,
    parse_cookie_reply,
    parse_initiation,
    parse_response,
)
from .peer import Endpoint, Keypair, Peer
from .ratelimiter import RateLimiter
from .tai64n import tai64n

JITTER_POOL = 256  # rekey-timeout jitter values drawn per rand() call
_JITTER_MS = int(REKEY_TIMEOUT_JITTER_MAX * 1000)


class DeviceError(Exception):
    """Base of the device's errors."""


class LocalDeviceError(DeviceError):
    """The caller misused the API (e.g. too many peers)."""


@dataclass(frozen=True, slots=True)
class HandshakeCompleted:
    public_key: bytes
    is_initiator: bool


@dataclass(frozen=True, slots=True)
class EndpointChanged:
    public_key: bytes
    endpoint: Endpoint


Event = HandshakeCompleted | EndpointChanged


def endpoint_bytes(ep: Endpoint) -> bytes:
    """The bytes a cookie binds to: host text and port (private to us, any encoding works)."""
    return ep[0].encode() + ep[1].to_bytes(2, "little")


class Device(DataPath):
    """WireGuard peers, sessions and timers. Performs no I/O."""

    def __init__(
        self,
        *,
        rand: Callable[[int], bytes],
        lock: AbstractContextManager[object] | None = None,
        mtu: int = DEFAULT_MTU,
        wall_offset_ns: int = 0,
    ) -> None:
        """rand: source of random bytes; lock: guards slot rotation across threads;
        wall_offset_ns: Unix ns minus monotonic ns, for TAI64N and `last handshake`."""
        self.rand = rand
        self.lock: AbstractContextManager[object] = lock if lock is not None else nullcontext()
        self.mtu = mtu
        self.wall_offset_ns = wall_offset_ns
        self.private_key: bytes | None = None
        self.public_key: bytes | None = None
        self.peers: dict[bytes, Peer] = {}
        self.allowed_ips: AllowedIPs[Peer] = AllowedIPs()
        self.keypairs: dict[int, Keypair] = {}  # local index -> keypair (RX hot path)
        self.handshakes: dict[int, Peer] = {}  # local index of a pending initiation
        self.cookie_checker: CookieChecker | None = None
        self.ratelimiter = RateLimiter()
        self.drops: Counter[str] = Counter()
        self._out: deque[tuple[Endpoint, bytes]] = deque()
        self._events: deque[Event] = deque()
        self._jitter_pool: list[float] = []

    # ---- configuration -------------------------------------------------------------------

    def set_private_key(self, private: bytes | None) -> None:
        """Set (or clear with None) the static private key; recomputes per-peer DH values."""
        with self.lock:
            if private is None or not any(private):
                self.private_key = self.public_key = None
                self.cookie_checker = None
            else:
                self.private_key = clamp(private)
                self.public_key = public_key(self.private_key)
                self.cookie_checker = CookieChecker(self.public_key, self.rand)
            # wireguard-go drops a peer whose key equals our new public key.
            if self.public_key is not None and self.public_key in self.peers:
                self._remove_peer_locked(self.peers[self.public_key])
            for peer in self.peers.values():
                self._precompute(peer)
                self._clear_sessions(peer)

    def _precompute(self, peer: Peer) -> None:
        peer.static_static = None
        if self.private_key is not None:
            try:
                peer.static_static = DH(self.private_key, peer.public_key)
            except AuthenticationError:
                peer.static_static = None  # a low-order peer key: it can never handshake

    def add_peer(self, public_key: bytes) -> Peer:
        """Create a peer (or return the existing one)."""
        if len(public_key) != 32:
            raise LocalDeviceError("public key must be 32 bytes")
        with self.lock:
            peer = self.peers.get(public_key)
            if peer is not None:
                return peer
            if len(self.peers) >= MAX_PEERS:
                raise LocalDeviceError("too many peers")
            peer = Peer(public_key)
            self._precompute(peer)
            self.peers[public_key] = peer
            return peer

    def remove_peer(self, public_key: bytes) -> None:
        with self.lock:
            peer = self.peers.get(public_key)
            if peer is not None:
                self._remove_peer_locked(peer)

    def _remove_peer_locked(self, peer: Peer) -> None:
        self._clear_sessions(peer)
        self.allowed_ips.remove_peer(peer)
        peer.removed = True
        del self.peers[peer.public_key]

    def set_preshared_key(self, peer: Peer, psk: bytes | None) -> None:
        peer.preshared_key = psk if psk else bytes(32)

    def set_endpoint(self, peer: Peer, endpoint: Endpoint | None) -> None:
        peer.endpoint = endpoint

    def set_persistent_keepalive(self, peer: Peer, interval: int, now: float) -> None:
        """Set the interval; switching it on sends a keepalive at once (as wireguard-go)."""
        was = peer.persistent_keepalive_interval
        peer.persistent_keepalive_interval = interval
        if interval and not was and self.private_key is not None:
            self.send_keepalive(peer, now)
        if not interval:
            peer.timers.persistent_keepalive = None

    def _clear_sessions(self, peer: Peer) -> None:
        for kp in peer.keypairs():
            self.keypairs.pop(kp.local_index, None)
        peer.current = peer.previous = peer.next = None
        if peer.initiation is not None:
            self.handshakes.pop(peer.initiation.local_index, None)
            peer.initiation = None
        peer.staged.clear()
        t = peer.timers
        t.retransmit = t.new_handshake = t.send_keepalive = t.zero_keys = None
        t.handshake_attempts = 0

    # ---- helpers -------------------------------------------------------------------------

    def wall_ns(self, now: float) -> int:
        return int(now * 1e9) + self.wall_offset_ns

    def _jitter(self) -> float:
        """Uniform 0..333 ms. Drawn from a pool: the data path arms a timer with jitter on
        almost every batch, and one rand() call (a getrandom syscall) per batch adds up."""
        if not self._jitter_pool:
            raw = self.rand(2 * JITTER_POOL)
            self._jitter_pool = [
                int.from_bytes(raw[i : i + 2], "little") % _JITTER_MS / 1000
                for i in range(0, len(raw), 2)
            ]
        return self._jitter_pool.pop()

    def _new_index(self) -> int:
        while True:
            idx = int.from_bytes(self.rand(4), "little")
            if idx not in self.keypairs and idx not in self.handshakes:
                return idx

    def _send(self, ep: Endpoint | None, data: bytes) -> None:
        if ep is None:
            self.drops["no_endpoint"] += 1
            return
        self._out.append((ep, data))

    def datagrams_to_send(self) -> list[tuple[Endpoint, bytes]]:
        """Handshake, cookie and keepalive datagrams produced since the last call."""
        out = []
        pop = self._out.popleft
        while self._out:
            out.append(pop())
        return out

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    # ---- handshake: initiator ------------------------------------------------------------

    def send_initiation(self, peer: Peer, now: float, *, is_retry: bool = False) -> None:
        """Start a handshake unless one left less than REKEY_TIMEOUT ago (timers.go)."""
        if not is_retry:
            peer.timers.handshake_attempts = 0
        if now - peer.last_sent_initiation < REKEY_TIMEOUT:
            return
        if self.private_key is None or self.public_key is None or peer.static_static is None:
            self.drops["handshake_no_key"] += 1
            return
        with self.lock:
            if peer.removed:
                return
            if peer.initiation is not None:
                self.handshakes.pop(peer.initiation.local_index, None)
            index = self._new_index()
            msg, state = noise.create_initiation(
                self.private_key,
                self.public_key,
                peer.public_key,
                peer.static_static,
                clamp(self.rand(32)),
                index,
                tai64n(self.wall_ns(now)),
            )
            peer.initiation = state
            self.handshakes[index] = peer
            peer.last_sent_initiation = now
        self._send(peer.endpoint, peer.cookie.add_macs(msg.pack_body(), now))
        self._authenticated_sent(peer, now)
        peer.timers.retransmit = now + REKEY_TIMEOUT + self._jitter()

    # ---- handshake: receive path ---------------------------------------------------------

    def receive_handshake(
        self, data: bytes | memoryview, ep: Endpoint, now: float, *, under_load: bool = False
    ) -> None:
        """Process one initiation, response or cookie reply. Bad ones are dropped, counted."""
        checker = self.cookie_checker
        if checker is None:
            self.drops["no_private_key"] += 1
            return
        t = message_type(data)
        size_ok = (t == MESSAGE_INITIATION and len(data) == INITIATION_SIZE) or (
            t == MESSAGE_RESPONSE and len(data) == RESPONSE_SIZE
        )
        if t == MESSAGE_COOKIE_REPLY:
            self._receive_cookie_reply(data, now)
            return
        if not size_ok:
            self.drops["bad_type_or_size"] += 1
            return
        try:
            checker.check_mac1(data)
        except AuthenticationError:
            self.drops["bad_mac1"] += 1
            return
        if under_load:
            source = endpoint_bytes(ep)
            try:
                checker.check_mac2(data, source, now)
            except AuthenticationError:
                sender = int.from_bytes(bytes(data[4:8]), "little")
                self._send(ep, checker.create_reply(data, sender, source, now))
                self.drops["cookie_sent"] += 1
                return
            if not self.ratelimiter.allow(ep[0], now):
                self.drops["ratelimited"] += 1
                return
        try:
            if t == MESSAGE_INITIATION:
                self._receive_initiation(bytes(data), ep, now)
            else:
                self._receive_response(bytes(data), ep, now)
        except (AuthenticationError, ParseError):
            self.drops["handshake_auth"] += 1

    def _receive_cookie_reply(self, data: bytes | memoryview, now: float) -> None:
        try:
            reply = parse_cookie_reply(data)
        except ParseError:
            self.drops["bad_type_or_size"] += 1
            return
        peer = self.handshakes.get(reply.receiver)
        if peer is None:
            # wireguard-go also accepts replies to a response we sent: index of a next keypair.
            kp = self.keypairs.get(reply.receiver)
            peer = kp.peer if kp is not None else None
        if peer is None:
            self.drops["cookie_unknown_index"] += 1
            return
        try:
            peer.cookie.consume_reply(reply, now)
        except AuthenticationError:
            self.drops["cookie_auth"] += 1

    def _receive_initiation(self, data: bytes, ep: Endpoint, now: float) -> None:
        assert self.private_key is not None
        assert self.public_key is not None
        msg = parse_initiation(data)
        peer_static, chain, h = noise.consume_initiation_static(
            self.private_key, self.public_key, msg
        )
        peer = self.peers.get(peer_static)
        if peer is None or peer.static_static is None:
            self.drops["unknown_peer"] += 1
            return
        consumed = noise.consume_initiation_timestamp(
            msg, peer_static, peer.static_static, chain, h
        )
        # Replay and flood checks (noise-protocol.go ConsumeMessageInitiation), then commit.
        if consumed.timestamp <= peer.latest_timestamp:
            self.drops["handshake_replay"] += 1
            return
        if now - peer.last_consumed_initiation < HANDSHAKE_INITIATION_RATE:
            self.drops["handshake_flood"] += 1
            return
        with self.lock:
            if peer.removed:
                return
            peer.latest_timestamp = consumed.timestamp
            peer.last_consumed_initiation = now
            index = self._new_index()
            resp, keys = noise.create_response(
                consumed, peer.preshared_key, clamp(self.rand(32)), index
            )
            kp = Keypair(keys, peer, now)
            # Responder: new keypair waits in "next" until the initiator's first packet.
            if peer.next is not None:
                self.keypairs.pop(peer.next.local_index, None)
            if peer.previous is not None:
                self.keypairs.pop(peer.previous.local_index, None)
            peer.previous = None
            peer.next = kp
            self.keypairs[index] = kp
        self._set_endpoint(peer, ep)
        self._send(ep, peer.cookie.add_macs(resp.pack_body(), now))
        self._authenticated_sent(peer, now)
        self._session_derived(peer, now)

    def _receive_response(self, data: bytes, ep: Endpoint, now: float) -> None:
        assert self.private_key is not None
        msg = parse_response(data)
        peer = self.handshakes.get(msg.receiver)
        if peer is None or peer.initiation is None:
            self.drops["response_unknown_index"] += 1
            return
        keys = noise.consume_response(peer.initiation, self.private_key, peer.preshared_key, msg)
        with self.lock:
            if peer.removed or peer.initiation is None:
                return
            self.handshakes.pop(peer.initiation.local_index, None)
            peer.initiation = None
            kp = Keypair(keys, peer, now)
            # Initiator: the new keypair is current at once (noise-protocol.go); an
            # unconfirmed "next" becomes previous and the old current is dropped.
            old_previous = peer.previous
            if peer.next is not None:
                if peer.current is not None:
                    self.keypairs.pop(peer.current.local_index, None)
                peer.previous = peer.next
                peer.next = None
            else:
                peer.previous = peer.current
            if old_previous is not None:
                self.keypairs.pop(old_previous.local_index, None)
            peer.current = kp
            self.keypairs[kp.local_index] = kp
        self._set_endpoint(peer, ep)
        self._authenticated_received(peer, now)
        self._handshake_complete(peer, now, is_initiator=True)
        self._session_derived(peer, now)
        # Confirm the session to the responder: staged data, or else a keepalive.
        if peer.staged:
            self.flush_staged(peer, now)
        else:
            self.send_keepalive(peer, now)

    def promote_next(self, peer: Peer, kp: Keypair, now: float) -> None:
        """Key confirmation: the first packet under "next" makes it current (receive.go)."""
        with self.lock:
            if peer.next is not kp:
                return
            if peer.previous is not None:
                self.keypairs.pop(peer.previous.local_index, None)
            peer.previous = peer.current
            peer.current = kp
            peer.next = None
        self._handshake_complete(peer, now, is_initiator=False)
        if peer.staged:
            self.flush_staged(peer, now)

    # ---- timer bookkeeping (timers.go) ---------------------------------------------------

    def _set_endpoint(self, peer: Peer, ep: Endpoint) -> None:
        if peer.endpoint != ep:
            peer.endpoint = ep
            self._events.append(EndpointChanged(peer.public_key, ep))

    def _handshake_complete(self, peer: Peer, now: float, *, is_initiator: bool) -> None:
        t = peer.timers
        t.retransmit = None
        t.handshake_attempts = 0
        t.sent_last_minute_handshake = False
        peer.last_handshake_ns = self.wall_ns(now)
        self._events.append(HandshakeCompleted(peer.public_key, is_initiator))

    def _session_derived(self, peer: Peer, now: float) -> None:
        peer.timers.zero_keys = now + ZERO_KEY_MATERIAL_AFTER

    def _authenticated_sent(self, peer: Peer, now: float) -> None:
        t = peer.timers
        t.send_keepalive = None
        t.keepalive_again = False
        if peer.persistent_keepalive_interval:
            t.persistent_keepalive = now + peer.persistent_keepalive_interval

    def _authenticated_received(self, peer: Peer, now: float) -> None:
        t = peer.timers
        t.new_handshake = None
        if peer.persistent_keepalive_interval:
            t.persistent_keepalive = now + peer.persistent_keepalive_interval

    def _data_sent(self, peer: Peer, now: float) -> None:
        if peer.timers.new_handshake is None:
            peer.timers.new_handshake = now + KEEPALIVE_TIMEOUT + REKEY_TIMEOUT + self._jitter()

    def _data_received(self, peer: Peer, now: float) -> None:
        t = peer.timers
        if t.send_keepalive is None:
            t.send_keepalive = now + KEEPALIVE_TIMEOUT
        else:
            t.keepalive_again = True

    def sendable(self, kp: Keypair | None, now: float) -> bool:
        return (
            kp is not None
            and kp.sent_hint < REJECT_AFTER_MESSAGES
            and now - kp.created < REJECT_AFTER_TIME
        )

    def send_keepalive(self, peer: Peer, now: float) -> None:
        """Send an empty transport message (or start a handshake if no session)."""
        kp = peer.current
        if not self.sendable(kp, now):
            self.send_initiation(peer, now)
            return
        assert kp is not None
        out = self.seal_for_peer(peer, kp, [b""], now)
        for parts in out:
            self._send(peer.endpoint, b"".join(parts))
        self._authenticated_sent(peer, now)

    def after_send(self, peer: Peer, kp: Keypair, now: float) -> None:
        """Rekey on send: by message count, or by age if we initiated this session."""
        if kp.sent_hint > REKEY_AFTER_MESSAGES or (
            kp.is_initiator and now - kp.created > REKEY_AFTER_TIME
        ):
            self.send_initiation(peer, now)

    def after_receive(self, peer: Peer, kp: Keypair, now: float) -> None:
        """Rekey on receive, once, if our session is about to expire (receive.go)."""
        if (
            kp is peer.current
            and kp.is_initiator
            and not peer.timers.sent_last_minute_handshake
            and now - kp.created > REJECT_AFTER_TIME - KEEPALIVE_TIMEOUT - REKEY_TIMEOUT
        ):
            peer.timers.sent_last_minute_handshake = True
            self.send_initiation(peer, now)

    # ---- timers --------------------------------------------------------------------------

    def get_timer(self) -> float | None:
        """The earliest deadline over all peers, or None."""
        best: float | None = None
        for peer in self.peers.values():
            t = peer.timers
            for d in (
                t.retransmit,
                t.new_handshake,
                t.send_keepalive,
                t.zero_keys,
                t.persistent_keepalive,
            ):
                if d is not None and (best is None or d < best):
                    best = d
        return best

    def handle_timer(self, now: float) -> None:
        """Fire every expired per-peer timer."""
        for peer in list(self.peers.values()):
            t = peer.timers
            if t.retransmit is not None and now >= t.retransmit:
                t.retransmit = None
                if t.handshake_attempts > MAX_TIMER_HANDSHAKES:
                    # Give up (timers.go expiredRetransmitHandshake).
                    t.new_handshake = None
                    peer.staged.clear()
                    if t.zero_keys is None:
                        t.zero_keys = now + ZERO_KEY_MATERIAL_AFTER
                else:
                    t.handshake_attempts += 1
                    self.send_initiation(peer, now, is_retry=True)
            if t.new_handshake is not None and now >= t.new_handshake:
                t.new_handshake = None
                self.send_initiation(peer, now)
            if t.send_keepalive is not None and now >= t.send_keepalive:
                again = t.keepalive_again
                t.send_keepalive = None
                self.send_keepalive(peer, now)
                if again:
                    t.keepalive_again = False
                    t.send_keepalive = now + KEEPALIVE_TIMEOUT
            if t.zero_keys is not None and now >= t.zero_keys:
                t.zero_keys = None
                with self.lock:
                    self._clear_sessions(peer)
                    peer.last_sent_initiation = float("-inf")
            if t.persistent_keepalive is not None and now >= t.persistent_keepalive:
                t.persistent_keepalive = None
                if peer.persistent_keepalive_interval:
                    self.send_keepalive(peer, now)

    # ---- convenience for simple drivers and tests ----------------------------------------

    def receive_datagrams(
        self, batch: Sequence[tuple[bytes | memoryview, Endpoint]], now: float
    ) -> list[bytes]:
        """Handle any mix of messages; returns the inner packets to deliver."""
        packets, others = self.decrypt_transport(batch, now)
        for data, ep in others:
            self.receive_handshake(data, ep, now)
        return packets
