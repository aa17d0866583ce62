"""Per-peer state: configuration, handshake progress, keypair slots, timer deadlines, counters.

Timers are kept as absolute deadlines (monotonic seconds, None = disarmed) and evaluated by
Device.handle_timer; this is the lazy form of wireguard-go's timers.go: arming a timer on the
data path is one attribute store.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from .constants import MAX_STAGED_PACKETS
from .cookie import CookieGenerator
from .noise import InitiatorState, SessionKeys
from .transport import OpenerLike, SealerLike, make_opener, make_sealer

# Where a peer is reached: (IP text, IPv6 scope kept as "%zone"; port), or a synthetic
# ("nodekey:<hex>", 0) that the node's bind maps to a real path (wireguard-go conn.Endpoint).
Endpoint = tuple[str, int]


class Keypair:
    """One session's transport keys. The sealer owns the send counter, the opener the replay
    window (transport.py)."""

    __slots__ = (
        "created",
        "is_initiator",
        "local_index",
        "opener",
        "peer",
        "remote_index",
        "sealer",
        "sent_hint",
    )

    def __init__(self, keys: SessionKeys, peer: Peer, now: float) -> None:
        self.sealer: SealerLike = make_sealer(keys.send_key)
        self.opener: OpenerLike = make_opener(keys.receive_key)
        self.sent_hint = 0  # last counter used, updated per batch (for rekey-after-messages)
        self.created = now
        self.local_index = keys.local_index
        self.remote_index = keys.remote_index
        self.is_initiator = keys.is_initiator
        self.peer = peer


@dataclass(slots=True)
class PeerTimers:
    retransmit: float | None = None
    new_handshake: float | None = None
    send_keepalive: float | None = None
    keepalive_again: bool = False
    zero_keys: float | None = None
    persistent_keepalive: float | None = None
    handshake_attempts: int = 0
    sent_last_minute_handshake: bool = False


class Peer:
    """A configured peer. Created and configured through Device."""

    def __init__(self, public_key: bytes) -> None:
        self.public_key = public_key
        self.preshared_key = bytes(32)
        self.endpoint: Endpoint | None = None
        self.persistent_keepalive_interval = 0  # seconds, 0 = off
        self.cookie = CookieGenerator(public_key)
        self.static_static: bytes | None = None
        # Handshake.
        self.initiation: InitiatorState | None = None
        self.last_sent_initiation = float("-inf")
        self.last_consumed_initiation = float("-inf")
        self.latest_timestamp = bytes(12)
        # Keypair slots.
        self.current: Keypair | None = None
        self.previous: Keypair | None = None
        self.next: Keypair | None = None
        self.timers = PeerTimers()
        self.staged: deque[bytes] = deque(maxlen=MAX_STAGED_PACKETS)
        # Counters for `wg show`.
        self.tx_bytes = 0
        self.rx_bytes = 0
        self.last_handshake_ns = 0  # wall clock, Unix ns
        self.removed = False

    def keypairs(self) -> list[Keypair]:
        return [k for k in (self.previous, self.current, self.next) if k is not None]

    def __repr__(self) -> str:
        return f"Peer({self.public_key.hex()[:8]})"
