"""Users: State's methods for them (mixed into :class:`~meshscale.control.state.State`).

A local user is identified by its name, which is unique among local users. A user from an
identity provider is identified by ``provider_id``; its name may repeat a local one
(the schema's partial unique indexes say the same). A user who owns nodes cannot be
deleted. Its pre-auth keys go with it.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING, Final

from meshscale.control.db.repository import IntegrityError
from meshscale.control.models import (
    Change,
    Conflict,
    InvalidArgument,
    Node,
    NodeID,
    NotFound,
    PreAuthKey,
    PreAuthKeyID,
    User,
    UserChanged,
    UserID,
)

if TYPE_CHECKING:
    from meshscale.control.db.repository import Store

USER_NAME_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,62}$")


class UserMethods:
    """State's user methods (see the module docstring)."""

    # Provided by State.
    store: Store
    clock: Callable[[], datetime]
    _lock: threading.RLock
    _users: dict[UserID, User]
    _nodes: dict[NodeID, Node]
    _paks: dict[PreAuthKeyID, PreAuthKey]

    if TYPE_CHECKING:

        def _write(self, durable: bool = True) -> AbstractContextManager[None]: ...
        def _emit(self, event: Change) -> None: ...
        def delete_preauth_key(self, key_id: PreAuthKeyID) -> None: ...

    def create_user(
        self, name: str, *, display_name: str = "", email: str = "",
        provider_id: str | None = None,
    ) -> User:
        if not USER_NAME_RE.match(name):
            raise InvalidArgument(
                f"invalid user name {name[:70]!r}: 1-63 of letters, digits and ._@+- "
                "starting with a letter or digit"
            )
        with self._write():
            if provider_id is None and any(
                u.name == name and u.provider_id is None for u in self._users.values()
            ):
                raise Conflict(f"user {name!r} already exists")
            user = User(UserID(0), name, display_name, email, provider_id, self.clock())
            try:
                user = replace(user, id=self.store.insert_user(user))
            except IntegrityError as exc:
                raise Conflict(f"user {name!r} already exists") from exc
            self._users[user.id] = user
            self._emit(UserChanged(user.id))
            return user

    def get_user(self, user_id: UserID) -> User:
        user = self._users.get(user_id)
        if user is None:
            raise NotFound(f"user {user_id} not found")
        return user

    def get_user_by_name(self, name: str) -> User:
        """The local user called ``name`` (else the only user of that name)."""
        matches = [u for u in self._users.values() if u.name == name]
        local = [u for u in matches if u.provider_id is None]
        if local:
            return local[0]
        if len(matches) == 1:
            return matches[0]
        if not matches:
            raise NotFound(f"user {name!r} not found")
        raise Conflict(f"user name {name!r} is ambiguous; use the user id")

    def list_users(self) -> list[User]:
        with self._lock:
            return sorted(self._users.values(), key=lambda u: u.id)

    def rename_user(self, user_id: UserID, new_name: str) -> User:
        if not USER_NAME_RE.match(new_name):
            raise InvalidArgument(f"invalid user name {new_name[:70]!r}")
        with self._write():
            user = self.get_user(user_id)
            if user.provider_id is None and any(
                u.name == new_name and u.provider_id is None and u.id != user_id
                for u in self._users.values()
            ):
                raise Conflict(f"user {new_name!r} already exists")
            user = replace(user, name=new_name)
            self.store.update_user(user)
            self._users[user.id] = user
            self._emit(UserChanged(user.id))
            return user

    def delete_user(self, user_id: UserID) -> None:
        """Delete a user and its pre-auth keys. Refused while the user owns nodes."""
        with self._write():
            self.get_user(user_id)
            if any(n.user_id == user_id for n in self._nodes.values()):
                raise Conflict("user still has nodes; delete or move them first")
            for key in [k for k in self._paks.values() if k.user_id == user_id]:
                self.delete_preauth_key(key.id)  # nodes moved elsewhere may reference it
            self.store.delete_user(user_id)
            del self._users[user_id]
            self._emit(UserChanged(user_id))
