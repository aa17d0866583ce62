"""Pre-auth keys and API keys: formats, hashing, and State's methods for them.

Key text (Headscale >= 0.27 shape)::

    hskey-auth-<12 hex prefix>-<64 hex secret>     pre-auth key
    hskey-api-<12 hex prefix>-<64 hex secret>      API key

The prefix is the public lookup handle (unique index); only sha256(secret) is stored and
compared in constant time. :class:`KeyMethods` is mixed into
:class:`~meshscale.control.state.State`, whose lock, store transaction (``_write``) and
in-memory tables it uses; every write still goes through State.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Final

from meshscale.control.models import (
    API_KEY_PREFIX,
    KEY_PREFIX_LENGTH,
    KEY_SECRET_LENGTH,
    PREAUTH_KEY_PREFIX,
    APIKey,
    APIKeyError,
    APIKeyID,
    Conflict,
    NewAPIKey,
    NewPreAuthKey,
    Node,
    NodeID,
    NotFound,
    PreAuthKey,
    PreAuthKeyError,
    PreAuthKeyID,
    User,
    UserID,
)
from meshscale.control.names import validate_tags

if TYPE_CHECKING:
    from meshscale.control.db.repository import Store

DEFAULT_PREAUTH_KEY_EXPIRATION: Final = timedelta(hours=1)  # Headscale CLI default
DEFAULT_API_KEY_EXPIRATION: Final = timedelta(days=90)  # Headscale CLI default
API_KEY_LAST_SEEN_PERSIST: Final = timedelta(minutes=1)  # coarser: no write per request


def hash_secret(secret: str) -> bytes:
    # Secrets are 256 random bits, so a fast hash is as strong as bcrypt here: there is
    # nothing to brute-force. Only the hash is stored.
    return hashlib.sha256(secret.encode("ascii")).digest()


def split_key(text: str, kind: str) -> tuple[str, str] | None:
    """``<kind><prefix>-<secret>`` -> (prefix, secret), or None if malformed."""
    if not text.startswith(kind):
        return None
    rest = text[len(kind) :]
    prefix, sep, secret = rest.partition("-")
    if not sep or len(prefix) != KEY_PREFIX_LENGTH or len(secret) != KEY_SECRET_LENGTH:
        return None
    if not (prefix.isascii() and secret.isascii()):
        return None
    return prefix, secret


class KeyMethods:
    """State's pre-auth key and API key methods (see the module docstring)."""

    # Provided by State.
    store: Store
    clock: Callable[[], datetime]
    rand: Callable[[int], bytes]
    _lock: threading.RLock
    _nodes: dict[NodeID, Node]
    _paks: dict[PreAuthKeyID, PreAuthKey]
    _pak_by_prefix: dict[str, PreAuthKeyID]
    _api_keys: dict[APIKeyID, APIKey]
    _api_by_prefix: dict[str, APIKeyID]

    if TYPE_CHECKING:

        def _write(self, durable: bool = True) -> AbstractContextManager[None]: ...
        def get_user(self, user_id: UserID) -> User: ...

    # ---- pre-auth keys -----------------------------------------------------------------

    def create_preauth_key(
        self, user_id: UserID, *, reusable: bool = False, ephemeral: bool = False,
        expiration: datetime | None = None, tags: Iterable[str] = (),
    ) -> NewPreAuthKey:
        """Create a key; the returned ``secret`` is the only copy of the full key.

        ``expiration`` defaults to one hour from now.
        """
        tag_tuple = validate_tags(tags)
        now = self.clock()
        exp = expiration if expiration is not None else now + DEFAULT_PREAUTH_KEY_EXPIRATION
        with self._write():
            self.get_user(user_id)
            prefix, secret = self._new_secret(self._pak_by_prefix)
            key = PreAuthKey(
                PreAuthKeyID(0), user_id, prefix, hash_secret(secret), reusable, ephemeral,
                False, exp, tag_tuple, now,
            )
            key = replace(key, id=self.store.insert_preauth_key(key))
            self._paks[key.id] = key
            self._pak_by_prefix[prefix] = key.id
            return NewPreAuthKey(key, f"{PREAUTH_KEY_PREFIX}{prefix}-{secret}")

    def _new_secret(self, taken: dict[str, Any]) -> tuple[str, str]:
        for _ in range(16):
            prefix = self.rand(KEY_PREFIX_LENGTH // 2).hex()
            if prefix not in taken:
                return prefix, self.rand(KEY_SECRET_LENGTH // 2).hex()
        raise Conflict("could not find a free key prefix")  # pragma: no cover

    def list_preauth_keys(self, user_id: UserID | None = None) -> list[PreAuthKey]:
        with self._lock:
            keys = [k for k in self._paks.values() if user_id is None or k.user_id == user_id]
            return sorted(keys, key=lambda k: k.id)

    def get_preauth_key(self, key_id: PreAuthKeyID) -> PreAuthKey:
        key = self._paks.get(key_id)
        if key is None:
            raise NotFound(f"pre-auth key {key_id} not found")
        return key

    def expire_preauth_key(self, key_id: PreAuthKeyID) -> PreAuthKey:
        with self._write():
            key = replace(self.get_preauth_key(key_id), expiration=self.clock())
            self.store.update_preauth_key(key)
            self._paks[key.id] = key
            return key

    def delete_preauth_key(self, key_id: PreAuthKeyID) -> None:
        with self._write():
            key = self.get_preauth_key(key_id)
            for node in self._nodes.values():
                if node.auth_key_id == key_id:  # the schema's ON DELETE SET NULL, in memory
                    self._nodes[node.id] = replace(node, auth_key_id=None)
            self.store.delete_preauth_key(key_id)
            self._drop_pak(key)

    def _drop_pak(self, key: PreAuthKey) -> None:
        self._paks.pop(key.id, None)
        self._pak_by_prefix.pop(key.prefix, None)

    def validate_preauth_key(self, secret: str) -> PreAuthKey:
        """The key ``secret`` names, if it could admit a node now. Consumes nothing.

        Raises PreAuthKeyError: ``invalid authkey``, ``authkey expired``,
        ``authkey already used``.
        """
        with self._lock:
            key = self._lookup_pak(secret)
            self._check_pak(key)
            return key

    def _lookup_pak(self, secret: str) -> PreAuthKey:
        parts = split_key(secret, PREAUTH_KEY_PREFIX)
        key_id = self._pak_by_prefix.get(parts[0]) if parts else None
        key = self._paks.get(key_id) if key_id is not None else None
        # Constant-time compare; an unknown prefix compares against a dummy so both
        # paths cost the same.
        want = key.hash if key is not None else b"\0" * 32
        got = hash_secret(parts[1]) if parts else b"\1" * 32
        if not hmac.compare_digest(want, got) or key is None:
            raise PreAuthKeyError("invalid authkey")
        return key

    def _check_pak(self, key: PreAuthKey) -> None:
        if key.is_expired(self.clock()):
            raise PreAuthKeyError("authkey expired")
        if not key.reusable and key.used:
            raise PreAuthKeyError("authkey already used")

    def use_preauth_key(self, secret: str) -> PreAuthKey:
        """Validate and consume a key atomically; of two racing callers on a single-use
        key exactly one succeeds (also across processes sharing the database)."""
        with self._write():
            return self._consume_pak(secret)

    def _consume_pak(self, secret: str) -> PreAuthKey:
        key = self._lookup_pak(secret)
        self._check_pak(key)
        if not key.reusable:
            if not self.store.consume_preauth_key(key.id):
                raise PreAuthKeyError("authkey already used")
            key = replace(key, used=True)
            self._paks[key.id] = key
        return key

    # ---- API keys ----------------------------------------------------------------------

    def create_api_key(self, expiration: datetime | None = None) -> NewAPIKey:
        """Create an API key (default lifetime 90 days); ``secret`` is shown once."""
        now = self.clock()
        with self._write():
            prefix, secret = self._new_secret(self._api_by_prefix)
            key = APIKey(
                APIKeyID(0), prefix, hash_secret(secret),
                expiration if expiration is not None else now + DEFAULT_API_KEY_EXPIRATION,
                None, now,
            )
            key = replace(key, id=self.store.insert_api_key(key))
            self._api_keys[key.id] = key
            self._api_by_prefix[prefix] = key.id
            return NewAPIKey(key, f"{API_KEY_PREFIX}{prefix}-{secret}")

    def list_api_keys(self) -> list[APIKey]:
        with self._lock:
            return sorted(self._api_keys.values(), key=lambda k: k.id)

    def get_api_key(self, key_id_or_prefix: APIKeyID | str) -> APIKey:
        """By id, or by prefix (bare, ``hskey-api-<prefix>`` or ``...-***``)."""
        with self._lock:
            if isinstance(key_id_or_prefix, int):
                key = self._api_keys.get(key_id_or_prefix)
            else:
                p = key_id_or_prefix.removeprefix(API_KEY_PREFIX)[:KEY_PREFIX_LENGTH]
                kid = self._api_by_prefix.get(p)
                key = self._api_keys.get(kid) if kid is not None else None
            if key is None:
                raise NotFound(f"API key {str(key_id_or_prefix)[:30]!r} not found")
            return key

    def expire_api_key(self, key_id_or_prefix: APIKeyID | str) -> APIKey:
        with self._write():
            key = replace(self.get_api_key(key_id_or_prefix), expiration=self.clock())
            self.store.update_api_key(key)
            self._api_keys[key.id] = key
            return key

    def delete_api_key(self, key_id_or_prefix: APIKeyID | str) -> None:
        with self._write():
            key = self.get_api_key(key_id_or_prefix)
            self.store.delete_api_key(key.id)
            self._api_keys.pop(key.id, None)
            self._api_by_prefix.pop(key.prefix, None)

    def verify_api_key(self, secret: str) -> APIKey:
        """The API key ``secret`` names. Raises APIKeyError (``invalid API key`` or
        ``API key expired``). Compares in constant time; records last_seen."""
        with self._lock:
            parts = split_key(secret, API_KEY_PREFIX)
            kid = self._api_by_prefix.get(parts[0]) if parts else None
            key = self._api_keys.get(kid) if kid is not None else None
            want = key.hash if key is not None else b"\0" * 32
            got = hash_secret(parts[1]) if parts else b"\1" * 32
            if not hmac.compare_digest(want, got) or key is None:
                raise APIKeyError("invalid API key")
            now = self.clock()
            if key.is_expired(now):
                raise APIKeyError("API key expired")
            persist = key.last_seen is None or now - key.last_seen >= API_KEY_LAST_SEEN_PERSIST
            key = replace(key, last_seen=now)
            if persist:
                with self._write(durable=False):  # bookkeeping: no flush needed
                    self.store.update_api_key(key)
            self._api_keys[key.id] = key
            return key
