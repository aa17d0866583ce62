"""The Internet checksum (RFC 1071) for IPv4, TCP and UDP, fast enough for Python.

Partial sums are kept as integers reduced modulo 0xFFFF, in the range [0, 0xFFFE]. This is the
ones' complement sum: 2**16 == 1 (mod 0xFFFF), so a buffer read as one big-endian integer is
congruent to the sum of its 16-bit words (docs/protocol/wireguard.md §13.3, the `int.from_bytes`
trick, about 2.6 us for 1388 bytes against 13 us for struct.unpack + sum). In this representation
ones' complement zero has the single value 0, so the transmitted checksum `0xFFFF - sum` is never 0:
that is exactly the UDP rule (RFC 768: a computed 0 is sent as 0xFFFF), and for TCP and IPv4 both
encodings of zero verify.

For many equal-size segments (a TSO super-packet) numpy sums all of them in one call
(`segment_sums`, about 0.3 us per segment), see tso.py.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from typing_extensions import Buffer

__all__ = [
    "checksum",
    "fold",
    "ones_sum",
    "pseudo_header_sum",
    "segment_sums",
    "verify",
]

_M = 0xFFFF


def ones_sum(data: Buffer) -> int:
    """Ones' complement sum of `data` as big-endian 16-bit words, modulo 0xFFFF.

    An odd trailing byte is padded with a zero byte, as RFC 1071 specifies.
    """
    mv = memoryview(data)
    n = int.from_bytes(mv, "big")
    if mv.nbytes & 1:
        n <<= 8
    return n % _M


def fold(total: int) -> int:
    """Reduce any non-negative sum of 16-bit words to the [0, 0xFFFE] representation."""
    return total % _M


def checksum(data: Buffer, initial: int = 0) -> int:
    """The value to store in a checksum field: the complement of sum(data) + initial.

    `data` must have its checksum field zeroed; `initial` is usually a pseudo-header sum.
    The result is never 0 (see the module docstring).
    """
    return _M - (ones_sum(data) + initial) % _M


def verify(data: Buffer, initial: int = 0) -> bool:
    """True if `data` (checksum field included) plus `initial` sums to ones' complement zero."""
    return (ones_sum(data) + initial) % _M == 0


def pseudo_header_sum(src: Buffer, dst: Buffer, protocol: int, length: int) -> int:
    """Sum of the IPv4 (RFC 793) or IPv6 (RFC 8200 section 8.1) pseudo-header.

    Address length (4 or 16 bytes) selects the family; the sum is the same shape for both
    because zero padding does not change a ones' complement sum.
    """
    return (int.from_bytes(src, "big") + int.from_bytes(dst, "big") + protocol + length) % _M


def segment_sums(rows: npt.NDArray[np.uint8], start: int, stop: int) -> npt.NDArray[np.uint64]:
    """Ones' complement sums of columns [start, stop) of every row, modulo 0xFFFF.

    `rows` is a C-contiguous (n, stride) uint8 matrix with an even stride, `start` is even and
    any byte past a row's data up to `stop` rounded up to even must be zero (so odd lengths
    sum as RFC 1071 pads them). The words are summed in host (little-endian) order, which is
    the byte-swapped sum (RFC 1071 section 2(B)); swapping the folded result restores it.
    """
    words = rows.view(np.uint16)[:, start >> 1 : (stop + 1) >> 1]
    s: npt.NDArray[np.uint64] = words.sum(axis=1, dtype=np.uint64) % np.uint64(_M)
    if _LITTLE:
        s = ((s & np.uint64(0xFF)) << np.uint64(8)) | (s >> np.uint64(8))
    return s


_LITTLE = np.little_endian
