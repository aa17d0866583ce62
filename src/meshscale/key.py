"""Curve25519 key types, one per role, with Tailscale's text forms.

Each role has its own type so that a node key can never be passed where a disco key is
expected (tailscale types/key). Public keys marshal as ``<prefix>:<64 lowercase hex>``:

    nodekey:    WireGuard static key of a node (also its DERP identity)
    discokey:   disco (NAT traversal) key
    mkey:       machine key (ts2021 Noise static key)
    privkey:    / discoprivkey: / privkey: private forms (never logged)

Private keys compare in constant time and print redacted. No I/O: randomness comes from
the caller (``generate`` takes the 32 random bytes).
"""

from __future__ import annotations

import base64
import binascii
import hmac
from dataclasses import dataclass
from typing import ClassVar, Self

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

KEY_SIZE = 32  # bytes


class InvalidKeyError(ValueError):
    """A key's text or bytes are malformed."""


def clamp(raw: bytes) -> bytes:
    """Clamp a Curve25519 scalar (RFC 7748 section 5)."""
    b = bytearray(raw)
    b[0] &= 248
    b[31] = (b[31] & 127) | 64
    return bytes(b)


@dataclass(frozen=True, slots=True)
class _Public:
    raw: bytes
    PREFIX: ClassVar[str] = ""

    def __post_init__(self) -> None:
        if len(self.raw) != KEY_SIZE:
            raise InvalidKeyError(
                f"{type(self).__name__}: want {KEY_SIZE} bytes, got {len(self.raw)}"
            )

    @classmethod
    def from_text(cls, text: str) -> Self:
        """Parse ``prefix:hex``."""
        prefix, sep, hexpart = text.partition(":")
        if not sep or prefix != cls.PREFIX:
            raise InvalidKeyError(
                f"{cls.__name__}: expected prefix {cls.PREFIX!r} in {text[:16]!r}"
            )
        return cls.from_hex(hexpart)

    @classmethod
    def from_hex(cls, hexpart: str) -> Self:
        if len(hexpart) != 2 * KEY_SIZE:
            raise InvalidKeyError(f"{cls.__name__}: want {2 * KEY_SIZE} hex digits")
        try:
            return cls(bytes.fromhex(hexpart))
        except ValueError as exc:
            raise InvalidKeyError(f"{cls.__name__}: bad hex") from exc

    @classmethod
    def from_base64(cls, text: str) -> Self:
        try:
            raw = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InvalidKeyError(f"{cls.__name__}: bad base64") from exc
        return cls(raw)

    def text(self) -> str:
        return f"{self.PREFIX}:{self.raw.hex()}"

    def hex(self) -> str:
        return self.raw.hex()

    def b64(self) -> str:
        return base64.b64encode(self.raw).decode()

    def is_zero(self) -> bool:
        return self.raw == bytes(KEY_SIZE)

    def short(self) -> str:
        """The abbreviated form tailscale prints in logs: ``[AbCdE]``."""
        return "[" + base64.b64encode(self.raw).decode()[:5] + "]"

    def __str__(self) -> str:
        return self.text()


class NodePublic(_Public):
    PREFIX = "nodekey"


class DiscoPublic(_Public):
    PREFIX = "discokey"


class MachinePublic(_Public):
    PREFIX = "mkey"


class _Private:
    """A Curve25519 private key. Compares in constant time; never prints its bytes."""

    __slots__ = ("_key", "_pub", "_raw")
    PREFIX: ClassVar[str] = "privkey"
    PUBLIC: ClassVar[type[_Public]] = _Public

    def __init__(self, raw: bytes) -> None:
        if len(raw) != KEY_SIZE:
            raise InvalidKeyError(f"private key: want {KEY_SIZE} bytes")
        self._raw = clamp(raw)
        # Kept for shared(): the control server's key does two X25519 per handshake, and
        # rebuilding the key object each time cost as much again.
        self._key = X25519PrivateKey.from_private_bytes(self._raw)
        self._pub = self._key.public_key().public_bytes_raw()

    @classmethod
    def generate(cls, random32: bytes) -> Self:
        """Make a key from 32 random bytes supplied by the caller (os.urandom in drivers)."""
        return cls(random32)

    @classmethod
    def from_text(cls, text: str) -> Self:
        prefix, sep, hexpart = text.partition(":")
        if not sep or prefix != cls.PREFIX or len(hexpart) != 2 * KEY_SIZE:
            raise InvalidKeyError(f"expected {cls.PREFIX}:<64 hex>")
        try:
            return cls(bytes.fromhex(hexpart))
        except ValueError as exc:
            raise InvalidKeyError("bad hex in private key") from exc

    def text(self) -> str:
        return f"{self.PREFIX}:{self._raw.hex()}"

    @property
    def raw(self) -> bytes:
        return self._raw

    def public_raw(self) -> bytes:
        return self._pub

    def shared(self, peer_public: bytes) -> bytes:
        """X25519 with a peer's public key; all-zero results (low-order points) raise."""
        try:
            out = self._key.exchange(X25519PublicKey.from_public_bytes(peer_public))
        except ValueError as exc:  # cryptography refuses low-order points itself
            raise InvalidKeyError("X25519 with a low-order or malformed public key") from exc
        if not any(out):
            raise InvalidKeyError("X25519 produced the all-zero shared secret")
        return out

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and hmac.compare_digest(self._raw, other._raw)  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash(self._pub)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(<redacted>)"

    __str__ = __repr__


class NodePrivate(_Private):
    PREFIX = "privkey"

    def public(self) -> NodePublic:
        return NodePublic(self._pub)


class DiscoPrivate(_Private):
    PREFIX = "discoprivkey"

    def public(self) -> DiscoPublic:
        return DiscoPublic(self._pub)


class MachinePrivate(_Private):
    PREFIX = "privkey"

    def public(self) -> MachinePublic:
        return MachinePublic(self._pub)
