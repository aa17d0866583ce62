"""WireGuard protocol constants (whitepaper section 6; wireguard-go device/constants.go).

Times are in seconds, sizes in bytes.
"""

from __future__ import annotations

REKEY_AFTER_MESSAGES = 1 << 60
REJECT_AFTER_MESSAGES = (1 << 64) - (1 << 13) - 1
REKEY_AFTER_TIME = 120.0
REJECT_AFTER_TIME = 180.0
REKEY_ATTEMPT_TIME = 90.0
REKEY_TIMEOUT = 5.0
MAX_TIMER_HANDSHAKES = int(REKEY_ATTEMPT_TIME / REKEY_TIMEOUT)  # 18
REKEY_TIMEOUT_JITTER_MAX = 0.334  # exclusive upper bound of the uniform jitter
KEEPALIVE_TIMEOUT = 10.0
COOKIE_REFRESH_TIME = 120.0
HANDSHAKE_INITIATION_RATE = 1.0 / 50  # at most 50 accepted initiations per peer per second
ZERO_KEY_MATERIAL_AFTER = 3 * REJECT_AFTER_TIME  # 540 s
# Rekey on receive, for the initiator of the current session (timers.go "last minute").
REKEY_ON_RECEIVE_AGE = REJECT_AFTER_TIME - KEEPALIVE_TIMEOUT - REKEY_TIMEOUT  # 165 s

MAX_PEERS = 1 << 16
MAX_STAGED_PACKETS = 128  # per peer, oldest dropped first
DEFAULT_MTU = 1420
MAX_MESSAGE_SIZE = 65535

# "Under load" (wireguard-go device.go IsUnderLoad): queued handshakes >= 1024/8 and 1 s hold.
UNDER_LOAD_QUEUE = 128
UNDER_LOAD_AFTER_TIME = 1.0
# Per-source token bucket for handshakes under load (ratelimiter.go): 20/s, burst 5.
RATELIMIT_PACKETS_PER_SECOND = 20
RATELIMIT_BURST = 5

# Message types and exact sizes (docs/protocol/wireguard.md §2).
MESSAGE_INITIATION = 1
MESSAGE_RESPONSE = 2
MESSAGE_COOKIE_REPLY = 3
MESSAGE_TRANSPORT = 4
INITIATION_SIZE = 148
RESPONSE_SIZE = 92
COOKIE_REPLY_SIZE = 64
TRANSPORT_HEADER_SIZE = 16
AEAD_TAG_SIZE = 16
MIN_TRANSPORT_SIZE = TRANSPORT_HEADER_SIZE + AEAD_TAG_SIZE  # a keepalive
