"""Users: State's part for them.

A user belongs to one tailnet (issue #16; default: ``default``). A local user is
identified by its name, which is unique among the local users of its tailnet. A user from
an identity provider is identified by ``provider_id`` and signs in to the default tailnet;
its name may repeat a local one (the schema's partial unique indexes say the same). A
user who owns nodes cannot be deleted. Its pre-auth keys go with it.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Final

from meshscale.control.db.repository import IntegrityError
from meshscale.control.models import (
    DEFAULT_TAILNET,
    Conflict,
    InvalidArgument,
    NotFound,
    TailnetID,
    User,
    UserChanged,
    UserID,
)
from meshscale.control.state.core import StateCore
from meshscale.control.state.keys import Keys

USER_NAME_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,62}$")


class Users:
    """State's user methods, over the shared core (and the keys, which users own)."""

    def __init__(self, core: StateCore, keys: Keys) -> None:
        self.core = core
        self.keys = keys
        self._by_id: tuple[int, dict[UserID, User]] | None = None

    def create_user(
        self,
        name: str,
        *,
        display_name: str = "",
        email: str = "",
        provider_id: str | None = None,
        tailnet: TailnetID = DEFAULT_TAILNET,
    ) -> User:
        """A new user of ``tailnet``."""
        if not USER_NAME_RE.match(name):
            raise InvalidArgument(
                f"invalid user name {name[:70]!r}: 1-63 of letters, digits and ._@+- "
                "starting with a letter or digit"
            )
        core = self.core
        with core.write():
            where = core.get_tailnet(tailnet)
            if provider_id is None and any(
                u.name == name and u.provider_id is None and u.tailnet_id == tailnet
                for u in core.users.values()
            ):
                raise Conflict(f"user {name!r} already exists in tailnet {where.name!r}")
            user = User(UserID(0), name, display_name, email, provider_id, core.clock(),
                        tailnet_id=tailnet)  # fmt: skip
            try:
                user = replace(user, id=core.store.insert_user(user))
            except IntegrityError as exc:
                raise Conflict(f"user {name!r} already exists") from exc
            core.users[user.id] = user
            core.users_changed(tailnet)
            core.emit(UserChanged(user.id))
            return user

    def sign_in_user(
        self,
        issuer: str,
        subject: str,
        *,
        name: str,
        display_name: str = "",
        email: str = "",
        groups: tuple[str, ...] = (),
    ) -> User:
        """The OIDC user (issuer, subject), created or with its profile refreshed.

        Keyed by (issuer, subject) verbatim, never by email: two providers' users with the
        same address are two users. ``name`` is only used when creating.
        """
        if not issuer or not subject:
            raise InvalidArgument("OIDC sign-in needs an issuer and a subject")
        core = self.core
        with core.write():
            found = [
                u
                for u in core.users.values()
                if u.oidc_issuer == issuer and u.oidc_subject == subject
            ]
            if found:
                user = replace(found[0], display_name=display_name, email=email, groups=groups)
                core.store.update_user(user)
            else:
                if not USER_NAME_RE.match(name):
                    raise InvalidArgument(f"invalid user name {name[:70]!r}")
                pid = f"{issuer.rstrip('/')}/{subject}"
                user = User(
                    UserID(0),
                    name,
                    display_name,
                    email,
                    provider_id=pid,
                    created_at=core.clock(),
                    oidc_issuer=issuer,
                    oidc_subject=subject,
                    groups=groups,
                )
                try:
                    user = replace(user, id=core.store.insert_user(user))
                except IntegrityError as exc:
                    # provider_id is a display join; if it collides we refuse, never merge.
                    raise Conflict(f"identity {pid[:80]!r} collides") from exc
            core.users[user.id] = user
            core.users_changed()
            core.emit(UserChanged(user.id))
            return user

    def get_user_by_name(self, name: str, tailnet: TailnetID | None = None) -> User:
        """The local user called ``name`` (else the only user of that name), in
        ``tailnet`` or, with None, in the one tailnet that has such a user."""
        with self.core.lock:
            matches = [u for u in self.core.users.values()
                       if u.name == name
                       and (tailnet is None or u.tailnet_id == tailnet)]  # fmt: skip
        if len({u.tailnet_id for u in matches}) > 1:
            raise Conflict(f"user name {name!r} exists in several tailnets; name the tailnet")
        local = [u for u in matches if u.provider_id is None]
        if local:
            return local[0]
        if len(matches) == 1:
            return matches[0]
        if not matches:
            raise NotFound(f"user {name!r} not found")
        raise Conflict(f"user name {name!r} is ambiguous; use the user id")

    def list_users(self, tailnet: TailnetID | None = None) -> list[User]:
        """Every user, or those of ``tailnet``, by id."""
        with self.core.lock:
            users = self.core.users.values()
            return sorted((u for u in users if tailnet is None or u.tailnet_id == tailnet),
                          key=lambda u: u.id)  # fmt: skip

    def users_by_id(self) -> dict[UserID, User]:
        """Every user by id, shared between callers until the user table changes (each
        full map reads it): do not modify it."""
        core = self.core
        with core.lock:
            cached = self._by_id
            if cached is None or cached[0] != core.users_gen:
                cached = self._by_id = (core.users_gen, dict(sorted(core.users.items())))
            return cached[1]

    def rename_user(self, user_id: UserID, new_name: str) -> User:
        if not USER_NAME_RE.match(new_name):
            raise InvalidArgument(f"invalid user name {new_name[:70]!r}")
        core = self.core
        with core.write():
            user = core.get_user(user_id)
            if user.provider_id is None and any(
                u.name == new_name and u.provider_id is None and u.id != user_id
                and u.tailnet_id == user.tailnet_id
                for u in core.users.values()
            ):  # fmt: skip
                raise Conflict(f"user {new_name!r} already exists")
            user = replace(user, name=new_name)
            core.store.update_user(user)
            core.users[user.id] = user
            core.users_changed()
            core.emit(UserChanged(user.id))
            return user

    def delete_user(self, user_id: UserID) -> None:
        """Delete a user and its pre-auth keys. Refused while the user owns nodes."""
        core = self.core
        with core.write():
            core.get_user(user_id)
            if any(n.user_id == user_id for n in core.nodes.values()):
                raise Conflict("user still has nodes; delete or move them first")
            for key in [k for k in core.paks.values() if k.user_id == user_id]:
                self.keys.delete_preauth_key(key.id)  # nodes moved elsewhere may reference it
            core.store.delete_user(user_id)
            del core.users[user_id]
            core.users_changed()
            core.emit(UserChanged(user_id))
