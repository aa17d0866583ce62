"""Transport-message AEAD for one keypair (docs/protocol/wireguard.md §5.1-5.3): batch seal
with counter reservation, and open with the replay window.

The native module `_aead` (built from _aead.c at install, OpenSSL EVP, GIL released) is used
when present; PySealer / PyOpener are the byte-identical fallback. Both are always importable
so tests can compare them.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from typing import Literal, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from .constants import MESSAGE_TRANSPORT
from .crypto import pack_nonce
from .messages import TRANSPORT_HEADER
from .replay import ReplayFilter

_ZEROS = bytes(16)
_pack_header = TRANSPORT_HEADER.pack


def padding(length: int, mtu: int) -> int:
    """Zero bytes to append so the plaintext is a multiple of 16, capped at the MTU
    (wireguard-go send.go calculatePaddingSize)."""
    if not mtu:
        return (-length) & 15
    last = length % mtu if length > mtu else length
    padded = min((last + 15) & ~15, mtu)
    return padded - last


class SealerLike(Protocol):
    def seal_batch(
        self, packets: Sequence[bytes | memoryview], receiver: int, mtu: int
    ) -> tuple[list[list[bytes]], int, int]:
        """Seal packets under consecutive counters: ([header, ciphertext] pairs, wire bytes,
        last counter used)."""
        ...


class OpenerLike(Protocol):
    def open(self, message: bytes | memoryview) -> bytes | Literal[False] | None:
        """Plaintext; None if the tag fails; False if authentic but a replay / out of window."""
        ...


class PySealer:
    def __init__(self, key: bytes) -> None:
        self._seal = ChaCha20Poly1305(key).encrypt
        # next() on itertools.count is atomic under the GIL: two threads never get one nonce.
        self._counter = itertools.count()

    def seal_batch(
        self, packets: Sequence[bytes | memoryview], receiver: int, mtu: int
    ) -> tuple[list[list[bytes]], int, int]:
        seal = self._seal
        counter = self._counter
        out: list[list[bytes]] = []
        append = out.append
        nbytes = 0
        n = 0
        for pkt in packets:
            n = next(counter)
            length = len(pkt)
            pad = (-length) & 15
            if pad and length + pad > mtu:
                pad = padding(length, mtu)
            ct = seal(pack_nonce(n), bytes(pkt) + _ZEROS[:pad] if pad else pkt, None)
            nbytes += len(ct) + 16
            append([_pack_header(MESSAGE_TRANSPORT, receiver, n), ct])
        return out, nbytes, n


class PyOpener:
    def __init__(self, key: bytes) -> None:
        self._open = ChaCha20Poly1305(key).decrypt
        self._replay = ReplayFilter()

    def open(self, message: bytes | memoryview) -> bytes | Literal[False] | None:
        if len(message) < 32:
            raise ValueError("transport message too short")
        counter = int.from_bytes(message[8:16], "little")
        try:
            pt = self._open(pack_nonce(counter), message[16:], None)
        except InvalidTag:
            return None
        if not self._replay.accept(counter):
            return False
        return pt


try:
    from ._aead import Opener as NativeOpener
    from ._aead import Sealer as NativeSealer
except ImportError:  # built without a compiler or libssl-dev
    NATIVE = False
else:
    # MESHSCALE_PURE_AEAD=1 selects the fallback (benchmarks compare both in one run).
    NATIVE = os.environ.get("MESHSCALE_PURE_AEAD") != "1"


def make_sealer(key: bytes) -> SealerLike:
    return NativeSealer(key) if NATIVE else PySealer(key)


def make_opener(key: bytes) -> OpenerLike:
    return NativeOpener(key) if NATIVE else PyOpener(key)
