"""MAC1, MAC2 and cookie replies: the DoS layer of the handshake (docs/protocol/wireguard.md §4).

mac1 = MAC(HASH("mac1----" || receiver's static public), msg[:mac1 offset]) on every handshake
message, checked before any DH. mac2 = MAC(cookie, msg[:mac2 offset]) when the sender holds a
fresh cookie. Under load the responder answers a handshake without a valid mac2 with a cookie
reply: XAEAD(HASH("cookie--" || its public), nonce, cookie, ad = the mac1 it answers), where the
cookie is MAC(secret rotated every 120 s, source address bytes).
"""

from __future__ import annotations

import hmac
from collections.abc import Callable

from .constants import COOKIE_REFRESH_TIME, MESSAGE_INITIATION
from .crypto import HASH, LABEL_COOKIE, LABEL_MAC1, MAC, AuthenticationError, xaead_open, xaead_seal
from .messages import (
    INITIATION_MAC1_OFFSET,
    INITIATION_MAC2_OFFSET,
    RESPONSE_MAC1_OFFSET,
    RESPONSE_MAC2_OFFSET,
    CookieReply,
)


def _offsets(msg: bytes | memoryview) -> tuple[int, int]:
    if msg[0] == MESSAGE_INITIATION:
        return INITIATION_MAC1_OFFSET, INITIATION_MAC2_OFFSET
    return RESPONSE_MAC1_OFFSET, RESPONSE_MAC2_OFFSET


class CookieChecker:
    """Responder side: verifies mac1/mac2 on messages addressed to us, makes cookie replies."""

    __slots__ = ("_cookie_key", "_mac1_key", "_rand", "_secret", "_secret_time")

    def __init__(self, static_public: bytes, rand: Callable[[int], bytes]) -> None:
        self._mac1_key = HASH(LABEL_MAC1 + static_public)
        self._cookie_key = HASH(LABEL_COOKIE + static_public)
        self._rand = rand
        self._secret = rand(32)
        self._secret_time: float | None = None

    def check_mac1(self, msg: bytes | memoryview) -> None:
        """Raise AuthenticationError unless mac1 is valid (cheap; before any DH)."""
        off1, off2 = _offsets(msg)
        want = MAC(self._mac1_key, bytes(msg[:off1]))
        if not hmac.compare_digest(want, bytes(msg[off1:off2])):
            raise AuthenticationError("bad mac1")

    def _cookie(self, source: bytes, now: float) -> bytes:
        if self._secret_time is None or now - self._secret_time > COOKIE_REFRESH_TIME:
            self._secret = self._rand(32)
            self._secret_time = now
        return MAC(self._secret, source)

    def check_mac2(self, msg: bytes | memoryview, source: bytes, now: float) -> None:
        """Raise AuthenticationError unless mac2 carries our current cookie for source."""
        _, off2 = _offsets(msg)
        want = MAC(self._cookie(source, now), bytes(msg[:off2]))
        if not hmac.compare_digest(want, bytes(msg[off2 : off2 + 16])):
            raise AuthenticationError("bad mac2")

    def create_reply(
        self, msg: bytes | memoryview, receiver: int, source: bytes, now: float
    ) -> bytes:
        """A cookie reply to a handshake message from source (address bytes)."""
        off1, off2 = _offsets(msg)
        nonce = self._rand(24)
        sealed = xaead_seal(
            self._cookie_key, nonce, self._cookie(source, now), bytes(msg[off1:off2])
        )
        return CookieReply(receiver, nonce, sealed).pack()


class CookieGenerator:
    """Sender side, one per peer: fills in mac1/mac2 and absorbs cookie replies."""

    __slots__ = ("_cookie", "_cookie_key", "_cookie_time", "_last_mac1", "_mac1_key")

    def __init__(self, peer_static_public: bytes) -> None:
        self._mac1_key = HASH(LABEL_MAC1 + peer_static_public)
        self._cookie_key = HASH(LABEL_COOKIE + peer_static_public)
        self._cookie: bytes | None = None
        self._cookie_time = 0.0
        self._last_mac1: bytes | None = None

    def add_macs(self, body: bytes, now: float) -> bytes:
        """body is the message up to mac1; returns the complete message."""
        mac1 = MAC(self._mac1_key, body)
        self._last_mac1 = mac1
        with_mac1 = body + mac1
        if self._cookie is not None and now - self._cookie_time < COOKIE_REFRESH_TIME:
            return with_mac1 + MAC(self._cookie, with_mac1)
        return with_mac1 + bytes(16)

    def consume_reply(self, reply: CookieReply, now: float) -> None:
        """Store the cookie; raises AuthenticationError if the reply doesn't open."""
        if self._last_mac1 is None:
            raise AuthenticationError("cookie reply without a handshake sent")
        cookie = xaead_open(self._cookie_key, reply.nonce, reply.encrypted_cookie, self._last_mac1)
        self._cookie = cookie
        self._cookie_time = now
