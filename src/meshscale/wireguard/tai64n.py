"""TAI64N timestamps for handshake replay protection (docs/protocol/wireguard.md §5.4).

12 bytes big-endian: seconds = 2^62 + 10 + Unix seconds, then nanoseconds rounded down to a
multiple of 2^24 ns so that a timestamp does not leak a precise clock (wireguard-go tai64n.go).
"""

from __future__ import annotations

import struct

_BASE = (1 << 62) + 10
_WHITENER = 0x1000000  # 2^24 ns
_TAI = struct.Struct(">QI")
SIZE = 12


def tai64n(unix_ns: int) -> bytes:
    """Encode a wall-clock time given in Unix nanoseconds."""
    secs, nanos = divmod(unix_ns, 1_000_000_000)
    return _TAI.pack(_BASE + secs, nanos - nanos % _WHITENER)


def after(a: bytes, b: bytes) -> bool:
    """True if timestamp a is strictly later than b (bytewise big-endian compare)."""
    return a > b
