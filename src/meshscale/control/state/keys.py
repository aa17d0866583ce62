"""Pre-auth keys and API keys: their text format, hashing, and State's part for them.

Key text (Headscale >= 0.27 shape)::

    hskey-auth-<12 hex prefix>-<64 hex secret>     pre-auth key
    hskey-api-<12 hex prefix>-<64 hex secret>      API key

The prefix is the public lookup handle (unique index); only sha256(secret) is stored and
compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Container, Iterable, Mapping
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Final, TypeVar

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
    NotFound,
    PreAuthKey,
    PreAuthKeyError,
    PreAuthKeyID,
    TailnetID,
    UserID,
)
from meshscale.control.names import validate_tags
from meshscale.control.state.core import StateCore

DEFAULT_PREAUTH_KEY_EXPIRATION: Final = timedelta(hours=1)  # Headscale CLI default
DEFAULT_API_KEY_EXPIRATION: Final = timedelta(days=90)  # Headscale CLI default
API_KEY_LAST_SEEN_PERSIST: Final = timedelta(minutes=1)  # coarser: no write per request

_ID = TypeVar("_ID", bound=int)
_Key = TypeVar("_Key", PreAuthKey, APIKey)


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


def find_key(
    secret: str, kind: str, by_prefix: Mapping[str, _ID], table: Mapping[_ID, _Key]
) -> _Key | None:
    """The key ``secret`` names, compared in constant time; None if none matches. An
    unknown prefix compares against a dummy, so both paths cost the same."""
    parts = split_key(secret, kind)
    key_id = by_prefix.get(parts[0]) if parts else None
    key = table.get(key_id) if key_id is not None else None
    want = key.hash if key is not None else b"\0" * 32
    got = hash_secret(parts[1]) if parts else b"\1" * 32
    return key if hmac.compare_digest(want, got) else None


class Keys:
    """State's pre-auth key and API key methods, over the shared core."""

    def __init__(self, core: StateCore) -> None:
        self.core = core

    # ---- pre-auth keys -----------------------------------------------------------------

    def create_preauth_key(
        self,
        user_id: UserID,
        *,
        reusable: bool = False,
        ephemeral: bool = False,
        expiration: datetime | None = None,
        tags: Iterable[str] = (),
    ) -> NewPreAuthKey:
        """Create a key; the returned ``secret`` is the only copy of the full key.

        ``expiration`` defaults to one hour from now.
        """
        core = self.core
        tag_tuple = validate_tags(tags)
        now = core.clock()
        exp = expiration if expiration is not None else now + DEFAULT_PREAUTH_KEY_EXPIRATION
        with core.write():
            user = core.get_user(user_id)
            prefix, secret = self._new_secret(core.pak_by_prefix)
            key = PreAuthKey(
                PreAuthKeyID(0),
                user_id,
                prefix,
                hash_secret(secret),
                reusable,
                ephemeral,
                False,
                exp,
                tag_tuple,
                now,
                user.tailnet_id,  # a key admits nodes into its user's tailnet
            )
            key = replace(key, id=core.store.insert_preauth_key(key))
            core.paks[key.id] = key
            core.pak_by_prefix[prefix] = key.id
            return NewPreAuthKey(key, f"{PREAUTH_KEY_PREFIX}{prefix}-{secret}")

    def _new_secret(self, taken: Container[str]) -> tuple[str, str]:
        for _ in range(16):
            prefix = self.core.rand(KEY_PREFIX_LENGTH // 2).hex()
            if prefix not in taken:
                return prefix, self.core.rand(KEY_SECRET_LENGTH // 2).hex()
        raise Conflict("could not find a free key prefix")  # pragma: no cover

    def list_preauth_keys(
        self, user_id: UserID | None = None, tailnet: TailnetID | None = None
    ) -> list[PreAuthKey]:
        with self.core.lock:
            keys = [k for k in self.core.paks.values()
                    if (user_id is None or k.user_id == user_id)
                    and (tailnet is None or k.tailnet_id == tailnet)]  # fmt: skip
            return sorted(keys, key=lambda k: k.id)

    def get_preauth_key(self, key_id: PreAuthKeyID) -> PreAuthKey:
        key = self.core.paks.get(key_id)
        if key is None:
            raise NotFound(f"pre-auth key {key_id} not found")
        return key

    def expire_preauth_key(self, key_id: PreAuthKeyID) -> PreAuthKey:
        core = self.core
        with core.write():
            key = replace(self.get_preauth_key(key_id), expiration=core.clock())
            core.store.update_preauth_key(key)
            core.paks[key.id] = key
            return key

    def delete_preauth_key(self, key_id: PreAuthKeyID) -> None:
        core = self.core
        with core.write():
            key = self.get_preauth_key(key_id)
            for node in core.nodes.values():
                # The schema's ON DELETE SET NULL, in memory (not put_node: no policy
                # reads auth_key_id).
                if node.auth_key_id == key_id:
                    core.nodes[node.id] = replace(node, auth_key_id=None)
            core.store.delete_preauth_key(key_id)
            core.paks.pop(key.id, None)
            core.pak_by_prefix.pop(key.prefix, None)

    def validate_preauth_key(self, secret: str) -> PreAuthKey:
        """The key ``secret`` names, if it could admit a node now. Consumes nothing.

        Raises PreAuthKeyError: ``invalid authkey``, ``authkey expired``,
        ``authkey already used``.
        """
        with self.core.lock:
            key = self.lookup_preauth_key(secret)
            self._check_pak(key)
            return key

    def lookup_preauth_key(self, secret: str) -> PreAuthKey:
        """The key ``secret`` names, usable or not; PreAuthKeyError if there is none."""
        key = find_key(secret, PREAUTH_KEY_PREFIX, self.core.pak_by_prefix, self.core.paks)
        if key is None:
            raise PreAuthKeyError("invalid authkey")
        return key

    def _check_pak(self, key: PreAuthKey) -> None:
        if key.is_expired(self.core.clock()):
            raise PreAuthKeyError("authkey expired")
        if not key.reusable and key.used:
            raise PreAuthKeyError("authkey already used")

    def use_preauth_key(self, secret: str) -> PreAuthKey:
        """Validate and consume a key atomically; of two racing callers on a single-use
        key exactly one succeeds (also across processes sharing the database)."""
        with self.core.write():
            return self.consume_preauth_key(secret)

    def consume_preauth_key(self, secret: str) -> PreAuthKey:
        """``use_preauth_key`` inside a write the caller holds (the node write follows)."""
        key = self.lookup_preauth_key(secret)
        self._check_pak(key)
        if not key.reusable:
            if not self.core.store.consume_preauth_key(key.id):
                raise PreAuthKeyError("authkey already used")
            key = replace(key, used=True)
            self.core.paks[key.id] = key
        return key

    # ---- API keys ----------------------------------------------------------------------

    def create_api_key(
        self, expiration: datetime | None = None, tailnet: TailnetID | None = None
    ) -> NewAPIKey:
        """Create an API key (default lifetime 90 days); ``secret`` is shown once.
        ``tailnet``: the key sees and changes only that tailnet (None: a server admin)."""
        core = self.core
        now = core.clock()
        with core.write():
            if tailnet is not None:
                core.get_tailnet(tailnet)
            prefix, secret = self._new_secret(core.api_by_prefix)
            key = APIKey(
                APIKeyID(0),
                prefix,
                hash_secret(secret),
                expiration if expiration is not None else now + DEFAULT_API_KEY_EXPIRATION,
                None,
                now,
                tailnet,
            )
            key = replace(key, id=core.store.insert_api_key(key))
            core.api_keys[key.id] = key
            core.api_by_prefix[prefix] = key.id
            return NewAPIKey(key, f"{API_KEY_PREFIX}{prefix}-{secret}")

    def list_api_keys(self, tailnet: TailnetID | None = None) -> list[APIKey]:
        """Every API key, or those scoped to ``tailnet``."""
        with self.core.lock:
            keys = self.core.api_keys.values()
            return sorted((k for k in keys if tailnet is None or k.tailnet_id == tailnet),
                          key=lambda k: k.id)  # fmt: skip

    def get_api_key(self, key_id_or_prefix: APIKeyID | str) -> APIKey:
        """By id, or by prefix (bare, ``hskey-api-<prefix>`` or ``...-***``)."""
        core = self.core
        with core.lock:
            if isinstance(key_id_or_prefix, int):
                key = core.api_keys.get(key_id_or_prefix)
            else:
                p = key_id_or_prefix.removeprefix(API_KEY_PREFIX)[:KEY_PREFIX_LENGTH]
                kid = core.api_by_prefix.get(p)
                key = core.api_keys.get(kid) if kid is not None else None
            if key is None:
                raise NotFound(f"API key {str(key_id_or_prefix)[:30]!r} not found")
            return key

    def expire_api_key(self, key_id_or_prefix: APIKeyID | str) -> APIKey:
        core = self.core
        with core.write():
            key = replace(self.get_api_key(key_id_or_prefix), expiration=core.clock())
            core.store.update_api_key(key)
            core.api_keys[key.id] = key
            return key

    def delete_api_key(self, key_id_or_prefix: APIKeyID | str) -> None:
        core = self.core
        with core.write():
            key = self.get_api_key(key_id_or_prefix)
            core.store.delete_api_key(key.id)
            core.api_keys.pop(key.id, None)
            core.api_by_prefix.pop(key.prefix, None)

    def verify_api_key(self, secret: str) -> APIKey:
        """The API key ``secret`` names. Raises APIKeyError (``invalid API key`` or
        ``API key expired``). Compares in constant time; records last_seen."""
        core = self.core
        with core.lock:
            key = find_key(secret, API_KEY_PREFIX, core.api_by_prefix, core.api_keys)
            if key is None:
                raise APIKeyError("invalid API key")
            now = core.clock()
            if key.is_expired(now):
                raise APIKeyError("API key expired")
            persist = key.last_seen is None or now - key.last_seen >= API_KEY_LAST_SEEN_PERSIST
            key = replace(key, last_seen=now)
            if persist:
                with core.write(durable=False):  # bookkeeping: no flush needed
                    core.store.update_api_key(key)
            core.api_keys[key.id] = key
            return key
