"""Bounded TTL cache for forwarded answers, keyed by (qname, qtype, qclass)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

Key = tuple[str, int, int]


class AnswerCache:
    def __init__(self, max_entries: int = 4096, clock: Callable[[], float] | None = None) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be >= 1")
        self._max = max_entries
        # The driver passes time.monotonic; the core keeps no clock of its own.
        # Without a clock nothing could expire, so nothing is cached.
        self._clock: Callable[[], float] | None = clock
        self._items: OrderedDict[Key, tuple[float, bytes]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: Key) -> bytes | None:
        item = self._items.get(key)
        if item is None or self._clock is None or item[0] <= self._clock():
            if item is not None:
                del self._items[key]
            self.misses += 1
            return None
        self._items.move_to_end(key)
        self.hits += 1
        return item[1]

    def put(self, key: Key, wire: bytes, ttl: float) -> None:
        if ttl <= 0 or self._clock is None:
            return
        self._items[key] = (self._clock() + ttl, wire)
        self._items.move_to_end(key)
        while len(self._items) > self._max:
            self._items.popitem(last=False)
