"""One timer at a core's next deadline, for the drivers of sans-IO cores.

A core answers ``get_timer()`` (an absolute deadline in monotonic seconds, or None) and
``handle_timer(now)``. Its driver keeps ONE timer armed at that deadline and re-arms it after
every input, as aioquic's ``QuicConnectionProtocol.transmit()`` does; so an idle core wakes
nobody, and a busy one is woken when something is due rather than on a tick.

    LoopTimer    on an asyncio loop (``loop.call_at``): ``rearm()`` after each input on
                 the loop's thread; it calls ``handle_timer(now)`` when the deadline comes
    ThreadTimer  for a thread that owns a core (the engine's control thread), which calls
                 ``wait(core.get_timer())`` between rounds of work

Inputs that arrive on other threads (the engine's TX and RX threads feeding magicsock or
the WireGuard device) call ``poke()`` instead. Asking those cores for ``get_timer()`` costs
O(peers), too much for every batch on the data path, so pokes are rate-limited: the first
wakes the owner at once, the ones that follow within ``interval`` only set a flag, and the
owner looks again at the end of the interval if any came. A deadline armed on a data-path
thread is therefore seen within ``interval``; the data paths arm deadlines at least a second
away (WireGuard keepalive 10 s, new handshake 15 s, persistent keepalive >= 1 s; magicsock
heartbeat 3 s), and the rest is never later than the fixed ticks this replaces.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Protocol

__all__ = ["POKE_INTERVAL", "LoopTimer", "ThreadTimer"]

POKE_INTERVAL = 0.1  # seconds: the longest a deadline armed by a poke waits to be seen


class _PokeGate:
    """Which pokes must wake the owner: the first, then none until its quiet period ends."""

    __slots__ = ("_lock", "_swallowed", "quiet")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.quiet = False  # a poke woke the owner and its interval has not ended
        self._swallowed = False  # pokes came during the quiet period

    def poke(self) -> bool:
        """True if the caller must wake the owner now."""
        with self._lock:
            if self.quiet:
                self._swallowed = True
                return False
            self.quiet = True
            return True

    def quiet_over(self) -> bool:
        """The owner, at the end of a quiet period: True if pokes came in it (look at the
        core again; the quiet period goes on for another interval), else it ends."""
        with self._lock:
            if self._swallowed:
                self._swallowed = False
                return True
            self.quiet = False
            return False


class LoopTimer:
    """One ``loop.call_at`` handle kept at ``get_timer()`` (see the module docstring).

    ``get_timer`` and ``handle_timer`` run on the loop's thread and take any lock the core
    needs themselves. The core's clock must be ``loop.time()`` (asyncio's is
    ``time.monotonic``). ``wakeups`` counts the callbacks the loop ran for this timer.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        get_timer: Callable[[], float | None],
        handle_timer: Callable[[float], None],
        *,
        interval: float = POKE_INTERVAL,
    ) -> None:
        self._loop = loop
        self._get_timer = get_timer
        self._handle_timer = handle_timer
        self._interval = interval
        self._handle: asyncio.TimerHandle | None = None
        self._at: float | None = None
        self._gate = _PokeGate()
        self._quiet_handle: asyncio.TimerHandle | None = None
        self._closed = False
        self.wakeups = 0

    @property
    def deadline(self) -> float | None:
        """Where the timer is armed (None: disarmed)."""
        return self._at

    def rearm(self) -> None:
        """After an input on the loop's thread: arm the timer at the core's deadline."""
        if self._closed:
            return
        deadline = self._get_timer()
        if deadline == self._at:
            return
        if self._handle is not None:
            self._handle.cancel()
        self._at = deadline
        self._handle = None if deadline is None else self._loop.call_at(deadline, self._fire)

    def poke(self) -> None:
        """After an input on another thread (thread-safe; cheap when repeated)."""
        if not self._closed and self._gate.poke():
            self._loop.call_soon_threadsafe(self._poked)

    def cancel(self) -> None:
        self._closed = True
        for h in (self._handle, self._quiet_handle):
            if h is not None:
                h.cancel()
        self._handle = self._quiet_handle = None
        self._at = None

    def _fire(self) -> None:
        self.wakeups += 1
        when = self._at
        self._handle, self._at = None, None
        # asyncio may run a handle up to its clock resolution early; the core must not see
        # a time before the deadline it asked for.
        now = self._loop.time()
        self._handle_timer(now if when is None else max(now, when))
        self.rearm()

    def _poked(self) -> None:
        self.wakeups += 1
        self._look()

    def _quiet_over(self) -> None:
        self.wakeups += 1
        self._quiet_handle = None
        if self._gate.quiet_over():
            self._look()

    def _look(self) -> None:
        """Re-arm after pokes, and swallow further ones for an interval."""
        if self._closed:
            return
        self.rearm()
        self._quiet_handle = self._loop.call_at(
            self._loop.time() + self._interval, self._quiet_over
        )


class Event(Protocol):
    """What ThreadTimer waits on (``threading.Event``; tests pass a fake with a fake clock)."""

    def set(self) -> None: ...

    def clear(self) -> None: ...

    def wait(self, timeout: float | None = None) -> bool: ...


class ThreadTimer:
    """The owner thread's sleep until its core's deadline (see the module docstring).

    The owner loops ``wait(core.get_timer())``, then does its work (``handle_timer`` if the
    deadline is due). ``wake()`` (work queued for the owner) and ``poke()`` (a deadline may
    have moved) may be called from any thread. ``wakeups`` counts the owner's returns from
    the event wait, that is, every time the thread woke.
    """

    def __init__(
        self,
        *,
        interval: float = POKE_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
        event: Event | None = None,
    ) -> None:
        self._interval = interval
        self._clock = clock
        self._event: Event = event if event is not None else threading.Event()
        self._gate = _PokeGate()
        self._quiet_end: float | None = None
        self.wakeups = 0

    def wake(self) -> None:
        """Work for the owner: it returns from ``wait`` at once."""
        self._event.set()

    def poke(self) -> None:
        """A deadline may have moved (rate-limited; cheap when repeated)."""
        if self._gate.poke():
            self._event.set()

    def wait(self, deadline: float | None) -> None:
        """Block until ``deadline`` (None: none), a ``wake()``, or a poke. Owner only."""
        while True:
            now = self._clock()
            if self._quiet_end is not None and now >= self._quiet_end:
                if self._gate.quiet_over():
                    self._quiet_end = now + self._interval
                    return  # pokes came: the owner looks at its core again
                self._quiet_end = None
            until = deadline
            if self._quiet_end is not None and (until is None or self._quiet_end < until):
                until = self._quiet_end
            if until is not None and until <= now:
                return
            woken = self._event.wait(None if until is None else until - now)
            self.wakeups += 1
            if woken:
                self._event.clear()
                if self._quiet_end is None and self._gate.quiet:
                    # A poke woke us: pokes are swallowed until this interval ends.
                    self._quiet_end = self._clock() + self._interval
                return
            if deadline is not None and self._clock() >= deadline:
                return
