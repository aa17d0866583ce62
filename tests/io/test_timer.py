"""io.timer: one timer at a core's next deadline; idle cores wake nobody; pokes are bounded."""

from __future__ import annotations

import math

import pytest

from meshscale.io.timer import LoopTimer, ThreadTimer

from .fakeloop import FakeLoop


class FakeCore:
    """Deadlines from a list; handle_timer records when it ran and drops the due ones."""

    def __init__(self, deadlines: list[float] | None = None) -> None:
        self.deadlines = sorted(deadlines or [])
        self.fired: list[float] = []

    def get_timer(self) -> float | None:
        return self.deadlines[0] if self.deadlines else None

    def handle_timer(self, now: float) -> None:
        self.fired.append(now)
        self.deadlines = [d for d in self.deadlines if d > now]


def loop_timer(core: FakeCore, loop: FakeLoop, interval: float = 0.1) -> LoopTimer:
    return LoopTimer(loop, core.get_timer, core.handle_timer, interval=interval)


# ---- LoopTimer ----


def test_idle_core_never_wakes_the_loop() -> None:
    loop = FakeLoop()
    core = FakeCore()
    t = loop_timer(core, loop)
    t.rearm()
    loop.run_until(loop.now + 3600)
    assert (t.wakeups, loop.ran, core.fired) == (0, [], [])
    assert t.deadline is None


def test_fires_exactly_at_each_deadline_and_never_between() -> None:
    loop = FakeLoop(now=0.0)
    deadlines = [7.0 * i for i in range(1, 15)]
    core = FakeCore(deadlines)
    t = loop_timer(core, loop)
    t.rearm()
    loop.run_until(100.0)
    assert core.fired == deadlines
    assert loop.ran == deadlines  # one callback per deadline, none in between
    assert t.wakeups == len(deadlines)


def test_rearm_moves_the_one_timer() -> None:
    loop = FakeLoop(now=0.0)
    core = FakeCore([50.0])
    t = loop_timer(core, loop)
    t.rearm()
    core.deadlines = [10.0, 50.0]  # an input armed an earlier deadline
    t.rearm()
    assert loop.pending() == 1  # the handle at 50 was cancelled, not duplicated
    loop.run_until(60.0)
    assert core.fired == [10.0, 50.0]
    t.rearm()  # nothing changed: no new handle
    assert loop.pending() == 0


def test_handle_timer_never_sees_a_time_before_the_deadline() -> None:
    class EarlyLoop(FakeLoop):
        def time(self) -> float:
            return self.now - 1e-9  # asyncio may run a handle within its clock resolution

    loop = EarlyLoop(now=0.0)
    core = FakeCore([5.0])
    t = loop_timer(core, loop)
    t.rearm()
    loop.run_until(6.0)
    assert core.fired == [5.0]


def test_pokes_wake_once_then_once_per_interval_then_go_idle() -> None:
    loop = FakeLoop(now=0.0)
    core = FakeCore()
    t = loop_timer(core, loop, interval=0.1)
    t.rearm()
    for _ in range(1000):  # a burst of batches on a data-path thread
        t.poke()
    assert loop.pending() == 1  # one callback queued for the whole burst
    loop.run_until(0.05)
    assert t.wakeups == 1
    core.deadlines = [3.0]  # armed by a batch during the quiet period ...
    t.poke()
    loop.run_until(0.1)  # ... and seen when it ends
    assert t.deadline == 3.0
    loop.run_until(10.0)
    assert core.fired == [3.0]
    # poke wake, quiet-period end (pokes came), quiet-period end (none came), the deadline
    assert t.wakeups == 4
    loop.run_until(3600.0)
    assert t.wakeups == 4


def test_cancel_stops_the_timer_and_pokes() -> None:
    loop = FakeLoop(now=0.0)
    core = FakeCore([1.0])
    t = loop_timer(core, loop)
    t.rearm()
    t.cancel()
    t.poke()
    t.rearm()
    loop.run_until(10.0)
    assert (core.fired, t.wakeups, loop.pending()) == ([], 0, 0)


# ---- ThreadTimer ----


class Blocked(Exception):
    """The owner would sleep with no deadline and nothing to wake it."""


class FakeEvent:
    """threading.Event on a fake clock: wait() runs the scripted actions due before its
    timeout (each may set the event), then advances the clock."""

    def __init__(self) -> None:
        self.now = 0.0
        self.flag = False
        self.actions: list[tuple[float, object]] = []  # (time, callable)

    def clock(self) -> float:
        return self.now

    def set(self) -> None:
        self.flag = True

    def clear(self) -> None:
        self.flag = False

    def wait(self, timeout: float | None = None) -> bool:
        end = math.inf if timeout is None else self.now + timeout
        while not self.flag:
            self.actions.sort(key=lambda a: a[0])
            if not self.actions or self.actions[0][0] > end:
                if end == math.inf:
                    raise Blocked
                self.now = end
                return False
            at, action = self.actions.pop(0)
            self.now = max(self.now, at)
            action()  # type: ignore[operator]
        return True


def thread_timer(ev: FakeEvent, interval: float = 0.25) -> ThreadTimer:
    return ThreadTimer(interval=interval, clock=ev.clock, event=ev)


def test_owner_without_deadline_sleeps_until_woken() -> None:
    ev = FakeEvent()
    t = thread_timer(ev)
    with pytest.raises(Blocked):
        t.wait(None)
    assert t.wakeups == 0  # it never woke: no tick


def test_owner_wakes_at_its_deadline() -> None:
    ev = FakeEvent()
    t = thread_timer(ev)
    t.wait(5.0)
    assert (ev.now, t.wakeups) == (5.0, 1)
    t.wait(4.0)  # already due: no sleep at all
    assert t.wakeups == 1


def test_wake_ends_the_sleep_at_once() -> None:
    ev = FakeEvent()
    t = thread_timer(ev)
    ev.actions.append((2.0, t.wake))
    t.wait(30.0)
    assert (ev.now, t.wakeups) == (2.0, 1)


def test_pokes_are_rate_limited_for_the_owner() -> None:
    ev = FakeEvent()
    t = thread_timer(ev, interval=0.25)
    ev.actions += [(1.0 + i * 0.01, t.poke) for i in range(20)]  # batches at 100 Hz
    t.wait(None)  # the first poke
    assert (ev.now, t.wakeups) == (1.0, 1)
    t.wait(None)  # the rest were swallowed: one look at the end of the interval
    assert (ev.now, t.wakeups) == (1.25, 2)
    with pytest.raises(Blocked):  # no pokes in the next interval: idle again
        t.wait(None)
    assert (ev.now, t.wakeups) == (1.5, 3)
    ev.actions.append((9.0, t.poke))
    t.wait(20.0)  # a later poke wakes at once again
    assert (ev.now, t.wakeups) == (9.0, 4)
