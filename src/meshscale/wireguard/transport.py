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
from typing import Any, Literal, Protocol

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
        """Seal packets under consecutive counters: ([datagram] per packet, wire bytes, last
        counter used); a datagram is header + ciphertext + tag in one bytes object."""
        ...


OpenResult = bytes | Literal[False] | None
Batch = list[tuple[bytes | memoryview, Any]]


class OpenerLike(Protocol):
    def open(self, message: bytes | memoryview) -> OpenResult:
        """Plaintext; None if the tag fails; False if authentic but a replay / out of window."""
        ...

    def open_run(self, batch: Batch, start: int) -> tuple[list[OpenResult], int, int, int]:
        """Open the run of transport messages in batch (of (message, endpoint) pairs) from
        `start` that share batch[start]'s receiver index (at most MAX_RUN): (one open() result
        each, end of the run, wire bytes of the authentic ones, batch index of the last
        authentic one or -1)."""
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
            append([_pack_header(MESSAGE_TRANSPORT, receiver, n) + ct])
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

    def open_run(self, batch: Batch, start: int) -> tuple[list[OpenResult], int, int, int]:
        want = _transport_index(batch[start][0])
        if want is None:
            raise ValueError("open_run: batch[start] is not a transport message")
        results: list[OpenResult] = []
        nbytes, last, end = 0, -1, start
        stop = min(len(batch), start + MAX_RUN)
        while end < stop:
            msg = batch[end][0]
            if _transport_index(msg) != want:
                break
            r = self.open(msg)
            if r is not None and r is not False:
                nbytes += len(msg)
                last = end
            results.append(r)
            end += 1
        return results, end, nbytes, last


MAX_RUN = 256  # messages per open_run call (as _aead.c)


def _transport_index(msg: bytes | memoryview) -> int | None:
    if len(msg) < 32 or msg[0] != MESSAGE_TRANSPORT or msg[1] or msg[2] or msg[3]:
        return None
    return int.from_bytes(msg[4:8], "little")


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
