"""Per-source token bucket for handshakes under load (wireguard-go ratelimiter/ratelimiter.go).

20 handshake messages per second per source IP, burst 5. Entries idle for a second are
forgotten so a spoofed-source flood cannot grow the table without bound.
"""

from __future__ import annotations

from .constants import RATELIMIT_BURST, RATELIMIT_PACKETS_PER_SECOND

_COST = 1.0 / RATELIMIT_PACKETS_PER_SECOND  # seconds of credit per packet
_MAX_TOKENS = _COST * RATELIMIT_BURST
_GC_INTERVAL = 1.0  # seconds
MAX_ENTRIES = 1 << 16  # bound on tracked sources; beyond it new sources are refused


class RateLimiter:
    __slots__ = ("_entries", "_last_gc")

    def __init__(self) -> None:
        self._entries: dict[str, tuple[float, float]] = {}  # source -> (tokens, last time)
        self._last_gc = 0.0

    def allow(self, source: str, now: float) -> bool:
        if now - self._last_gc > _GC_INTERVAL:
            self._entries = {k: v for k, v in self._entries.items() if now - v[1] <= _GC_INTERVAL}
            self._last_gc = now
        entry = self._entries.get(source)
        if entry is None:
            if len(self._entries) >= MAX_ENTRIES:
                return False
            self._entries[source] = (_MAX_TOKENS - _COST, now)
            return True
        tokens, last = entry
        tokens = min(_MAX_TOKENS, tokens + (now - last))
        if tokens < _COST:
            self._entries[source] = (tokens, now)
            return False
        self._entries[source] = (tokens - _COST, now)
        return True
