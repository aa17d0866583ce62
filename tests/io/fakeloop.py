"""FakeLoop: the part of an asyncio loop that drivers' timers use, on a fake clock.

Single-threaded and deterministic (trio's MockClock in spirit): ``call_soon_threadsafe`` is
``call_soon``, and ``run_until(t)`` runs every handle due by ``t`` in time order, setting the
clock to each handle's time, then leaves the clock at ``t``.
"""

from __future__ import annotations

import asyncio
import heapq
from collections.abc import Callable
from typing import Any


class FakeHandle:
    def __init__(self, when: float, callback: Callable[..., object], args: tuple[Any, ...]) -> None:
        self._when = when
        self.callback = callback
        self.args = args
        self.cancelled = False

    def when(self) -> float:
        return self._when

    def cancel(self) -> None:
        self.cancelled = True


class FakeLoop(asyncio.AbstractEventLoop):
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now
        self._heap: list[tuple[float, int, FakeHandle]] = []
        self._seq = 0
        self.ran: list[float] = []  # the clock at each callback run

    def time(self) -> float:
        return self.now

    def call_at(self, when, callback, *args, context=None):  # type: ignore[override]
        h = FakeHandle(when, callback, args)
        self._seq += 1
        heapq.heappush(self._heap, (when, self._seq, h))
        return h

    def call_later(self, delay, callback, *args, context=None):  # type: ignore[override]
        return self.call_at(self.now + delay, callback, *args)

    def call_soon(self, callback, *args, context=None):  # type: ignore[override]
        return self.call_at(self.now, callback, *args)

    call_soon_threadsafe = call_soon  # type: ignore[assignment]

    def pending(self) -> int:
        return sum(1 for _, _, h in self._heap if not h.cancelled)

    def run_until(self, t: float, max_steps: int = 100_000) -> None:
        for _ in range(max_steps):
            while self._heap and self._heap[0][2].cancelled:
                heapq.heappop(self._heap)
            if not self._heap or self._heap[0][0] > t:
                self.now = max(self.now, t)
                return
            when, _, h = heapq.heappop(self._heap)
            self.now = max(self.now, when)
            self.ran.append(self.now)
            h.callback(*h.args)
        raise AssertionError(f"loop still busy after {max_steps} callbacks")
