"""Console sessions, sans-IO: opaque ids, CSRF tokens, idle and absolute expiry, login limits.

A session lives only in server memory (:class:`SessionStore`); the browser holds its id in
one cookie and nothing else: no API key, no token (spec dns-oidc-console §4.4). Signing in
always makes a new session (the id rotates on login); logout deletes it here. The clock and
the random source are parameters, so tests drive expiry without sleeping.
"""

from __future__ import annotations

import base64
import hmac
import os
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

SESSION_ID_BYTES = 32  # 256 bits, over the 128 the spec asks for
MAX_SESSIONS = 4096  # bound on memory: the oldest session is dropped past it
IDLE_TIMEOUT = timedelta(minutes=30)
ABSOLUTE_TIMEOUT = timedelta(hours=12)


def utcnow() -> datetime:
    return datetime.now(UTC)


def token(rand: Callable[[int], bytes], n: int = SESSION_ID_BYTES) -> str:
    return base64.urlsafe_b64encode(rand(n)).rstrip(b"=").decode()


@dataclass(slots=True)
class Session:
    id: str
    csrf: str
    actor: str  # who, for the audit log: "apikey:<prefix>" or "oidc:<email or subject>"
    api_key_id: int | None  # the API key signed in with; revoking it ends the session
    created: datetime
    last_seen: datetime
    flash: list[tuple[str, str]] = field(default_factory=list)  # (kind, text), shown once
    secret_once: str = ""  # a just-created key, shown on the next page and then forgotten


class SessionStore:
    """Server-side sessions keyed by id; see the module docstring."""

    def __init__(
        self,
        *,
        idle: timedelta = IDLE_TIMEOUT,
        absolute: timedelta = ABSOLUTE_TIMEOUT,
        clock: Callable[[], datetime] = utcnow,
        rand: Callable[[int], bytes] = os.urandom,
        max_sessions: int = MAX_SESSIONS,
    ) -> None:
        self.idle = idle
        self.absolute = absolute
        self.clock = clock
        self.rand = rand
        self.max_sessions = max_sessions
        self._sessions: OrderedDict[str, Session] = OrderedDict()

    def __len__(self) -> int:
        return len(self._sessions)

    def create(self, actor: str, api_key_id: int | None = None) -> Session:
        now = self.clock()
        sess = Session(token(self.rand), token(self.rand), actor, api_key_id, now, now)
        self._sessions[sess.id] = sess
        while len(self._sessions) > self.max_sessions:
            self._sessions.popitem(last=False)
        return sess

    def get(self, session_id: str | None) -> Session | None:
        """The live session with this id (touching it), or None; expired ones are dropped."""
        if not session_id:
            return None
        sess = self._sessions.get(session_id)
        if sess is None:
            return None
        now = self.clock()
        if now - sess.last_seen > self.idle or now - sess.created > self.absolute:
            del self._sessions[session_id]
            return None
        sess.last_seen = now
        self._sessions.move_to_end(session_id)
        return sess

    def delete(self, session_id: str | None) -> None:
        if session_id:
            self._sessions.pop(session_id, None)

    def drop_api_key(self, api_key_id: int) -> None:
        """End every session signed in with this API key (it was expired or deleted)."""
        for sid in [s.id for s in self._sessions.values() if s.api_key_id == api_key_id]:
            del self._sessions[sid]


def csrf_ok(sess: Session, sent: str | None) -> bool:
    """The synchronizer token check, in constant time."""
    return bool(sent) and hmac.compare_digest(sess.csrf.encode(), (sent or "").encode())


class LoginLimiter:
    """At most ``limit`` sign-in attempts per ``window`` per source address."""

    def __init__(
        self, limit: int = 10, window: timedelta = timedelta(minutes=1),
        clock: Callable[[], datetime] = utcnow, max_sources: int = 10000,
    ) -> None:  # fmt: skip
        self.limit = limit
        self.window = window
        self.clock = clock
        self.max_sources = max_sources
        self._seen: OrderedDict[str, list[datetime]] = OrderedDict()

    def allow(self, source: str) -> bool:
        now = self.clock()
        times = [t for t in self._seen.pop(source, []) if now - t < self.window]
        allowed = len(times) < self.limit
        if allowed:
            times.append(now)
        self._seen[source] = times
        while len(self._seen) > self.max_sources:
            self._seen.popitem(last=False)
        return allowed
