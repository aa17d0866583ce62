"""Console sessions, sans-IO: ids, idle and absolute expiry, bounds, API-key revocation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from meshscale.control.console.session import LoginLimiter, SessionStore, csrf_ok


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 3, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def test_ids_are_long_random_and_distinct() -> None:
    store = SessionStore()
    a, b = store.create("x"), store.create("x")
    assert a.id != b.id and a.csrf != b.csrf and a.id != a.csrf
    assert len(a.id) >= 43  # 256 bits, base64url
    assert csrf_ok(a, a.csrf) and not csrf_ok(a, b.csrf) and not csrf_ok(a, None)


def test_idle_and_absolute_expiry() -> None:
    clock = Clock()
    store = SessionStore(idle=timedelta(minutes=30), absolute=timedelta(hours=2), clock=clock)
    s = store.create("x")
    for _ in range(6):  # active use keeps it alive until the absolute limit
        clock.now += timedelta(minutes=20)
        assert store.get(s.id) is s
    clock.now += timedelta(minutes=20)  # 2 h 20 min after sign-in
    assert store.get(s.id) is None
    t = store.create("y")
    clock.now += timedelta(minutes=31)
    assert store.get(t.id) is None and len(store) == 0


def test_bounded_and_revocable() -> None:
    store = SessionStore(max_sessions=3)
    first = store.create("a", api_key_id=7)
    others = [store.create("b", api_key_id=8) for _ in range(3)]
    assert store.get(first.id) is None and len(store) == 3  # the oldest went
    store.drop_api_key(8)
    assert all(store.get(s.id) is None for s in others)
    assert store.get("") is None and store.get(None) is None


def test_login_limiter_window() -> None:
    clock = Clock()
    lim = LoginLimiter(limit=2, window=timedelta(minutes=1), clock=clock)
    assert lim.allow("a") and lim.allow("a") and not lim.allow("a") and lim.allow("b")
    clock.now += timedelta(seconds=61)
    assert lim.allow("a")
