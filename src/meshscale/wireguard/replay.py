"""Sliding replay window over transport counters (RFC 6479 bitmap ring;
docs/protocol/wireguard.md §5.3).

128 blocks of 64 bits; a counter more than 8128 behind the highest accepted is rejected.
Checked only after a packet authenticated, so forgeries never move the window.
"""

from __future__ import annotations

from .constants import REJECT_AFTER_MESSAGES

_BLOCK_BITS = 64
_RING_BLOCKS = 128
WINDOW_SIZE = (_RING_BLOCKS - 1) * _BLOCK_BITS  # 8128
_BLOCK_MASK = _RING_BLOCKS - 1


class ReplayFilter:
    __slots__ = ("_last", "_ring")

    def __init__(self) -> None:
        self._last = 0
        self._ring = [0] * _RING_BLOCKS

    def reset(self) -> None:
        self._last = 0
        self._ring = [0] * _RING_BLOCKS

    def accept(self, counter: int) -> bool:
        """Mark counter as seen; False if it is a replay, too old or out of range."""
        if counter >= REJECT_AFTER_MESSAGES:
            return False
        block = counter >> 6
        ring = self._ring
        if counter > self._last:
            current = self._last >> 6
            diff = block - current
            if diff > _RING_BLOCKS:
                diff = _RING_BLOCKS
            for i in range(1, diff + 1):
                ring[(current + i) & _BLOCK_MASK] = 0
            self._last = counter
        elif self._last - counter > WINDOW_SIZE:
            return False
        idx = block & _BLOCK_MASK
        bit = 1 << (counter & 63)
        old = ring[idx]
        if old & bit:
            return False
        ring[idx] = old | bit
        return True
