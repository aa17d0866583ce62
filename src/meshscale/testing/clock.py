"""FakeClock: monotonic seconds that only move when a test (or SimNet) moves them."""

from __future__ import annotations


class FakeClock:
    """A manual monotonic clock (trio's MockClock without the autojump thread).

    Time never goes backwards: ``jump_to`` an earlier instant is an error, since a
    core fed a decreasing ``now`` would be tested in a state real drivers never reach.
    """

    __slots__ = ("_now",)

    def __init__(self, start: float = 0.0) -> None:
        self._now = start

    def now(self) -> float:
        return self._now

    def __call__(self) -> float:
        return self._now

    def advance(self, seconds: float) -> float:
        if seconds < 0:
            raise ValueError("time cannot go backwards")
        self._now += seconds
        return self._now

    def jump_to(self, t: float) -> float:
        if t < self._now:
            raise ValueError(f"time cannot go backwards ({t} < {self._now})")
        self._now = t
        return self._now

    def __repr__(self) -> str:
        return f"FakeClock({self._now:.6f})"
