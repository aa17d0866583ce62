"""What a tailnet-scoped API key sees of State (issue #16 part 3, isolation).

A key made with ``apikeys create --tailnet NAME`` reaches /api/v1 through a
:class:`TailnetScope`: the same State methods the handlers call, narrowed to one tailnet.
Another tailnet's users, nodes, pre-auth keys, API keys and policy are NotFound (404), as
if they did not exist; lists hold only the tailnet's own objects; new users and API keys
land in it. Anything not defined here is Forbidden (403), so a State method a handler
starts to use later fails closed until it is scoped here. Server-level operations
(tailnets, audit log, address backfill, the list of pending registrations) are refused
before a handler runs (``SERVER_OPERATIONS``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, Final

from meshscale.control.db.repository import PolicyVersion
from meshscale.control.models import (
    APIKey,
    APIKeyID,
    Forbidden,
    IPPrefix,
    NewAPIKey,
    NewPreAuthKey,
    Node,
    NodeID,
    NotFound,
    PreAuthKey,
    PreAuthKeyID,
    RegisterMethod,
    Share,
    Tailnet,
    TailnetID,
    User,
    UserID,
)
from meshscale.control.state import State
from meshscale.tailcfg import FilterRule

# Operations a scoped key may never run: they are about the server, not one tailnet.
SERVER_OPERATIONS: Final = frozenset({
    "createTailnet", "renameTailnet", "deleteTailnet", "backfillNodeIPs", "listAudit",
    "listRegistrations",
})  # fmt: skip


class TailnetScope(State):
    """State as seen by an API key scoped to ``tailnet`` (see the module docstring).

    A State subclass only so handlers type-check unchanged; it shares no instance state
    with State and forwards each allowed call to ``inner``.
    """

    def __init__(self, inner: State, tailnet: TailnetID) -> None:
        # State.__init__ is not run: nothing of State is reachable but what is below.
        object.__setattr__(self, "_inner", inner)
        object.__setattr__(self, "_tailnet", tailnet)

    def __getattr__(self, name: str) -> Any:
        raise Forbidden(f"this API key is scoped to one tailnet: {name} is not allowed")

    # ---- checks ------------------------------------------------------------------------

    @property
    def scope(self) -> TailnetID:
        return self._tailnet  # type: ignore[no-any-return]

    @property
    def inner(self) -> State:
        return self._inner  # type: ignore[no-any-return]

    def _mine_user(self, user: User) -> User:
        if user.tailnet_id != self.scope:
            raise NotFound(f"user {user.id} not found")
        return user

    def _mine_node(self, node: Node) -> Node:
        if node.tailnet_id != self.scope:
            raise NotFound(f"node {node.id} not found")
        return node

    def _check_node(self, node_id: NodeID) -> None:
        self.get_node(node_id)

    # ---- tailnets ----------------------------------------------------------------------

    def list_tailnets(self) -> list[Tailnet]:
        return [self.inner.get_tailnet(self.scope)]

    def get_tailnet(self, tailnet_id: TailnetID) -> Tailnet:
        if tailnet_id != self.scope:
            raise NotFound(f"tailnet {tailnet_id} not found")
        return self.inner.get_tailnet(tailnet_id)

    def get_tailnet_by_name(self, name: str) -> Tailnet:
        mine = self.inner.get_tailnet(self.scope)
        if name != mine.name:
            raise NotFound(f"tailnet {str(name)[:70]!r} not found")
        return mine

    # ---- users -------------------------------------------------------------------------

    def get_user(self, user_id: UserID) -> User:
        return self._mine_user(self.inner.get_user(user_id))

    def get_user_by_name(self, name: str, tailnet: TailnetID | None = None) -> User:
        if tailnet is not None and tailnet != self.scope:
            raise NotFound(f"user {name[:70]!r} not found")
        return self.inner.get_user_by_name(name, self.scope)

    def list_users(self, tailnet: TailnetID | None = None) -> list[User]:
        if tailnet is not None and tailnet != self.scope:
            return []
        return self.inner.list_users(self.scope)

    def create_user(self, name: str, *, display_name: str = "", email: str = "",
                    provider_id: str | None = None,
                    tailnet: TailnetID | None = None) -> User:  # fmt: skip
        if tailnet is not None and tailnet != self.scope:
            raise NotFound(f"tailnet {tailnet} not found")
        return self.inner.create_user(name, display_name=display_name, email=email,
                                      provider_id=provider_id, tailnet=self.scope)  # fmt: skip

    def rename_user(self, user_id: UserID, new_name: str) -> User:
        self.get_user(user_id)
        return self.inner.rename_user(user_id, new_name)

    def delete_user(self, user_id: UserID) -> None:
        self.get_user(user_id)
        self.inner.delete_user(user_id)

    # ---- nodes -------------------------------------------------------------------------

    def get_node(self, node_id: NodeID) -> Node:
        return self._mine_node(self.inner.get_node(node_id))

    def list_nodes(
        self, user_id: UserID | None = None, tailnet: TailnetID | None = None
    ) -> list[Node]:
        if tailnet is not None and tailnet != self.scope:
            return []
        return self.inner.list_nodes(user_id, self.scope)

    def delete_node(self, node_id: NodeID) -> None:
        self._check_node(node_id)
        self.inner.delete_node(node_id)

    def expire_node(self, node_id: NodeID, at: datetime | None = None) -> Node:
        self._check_node(node_id)
        return self.inner.expire_node(node_id, at)

    def set_expiry(self, node_id: NodeID, expiry: datetime | None) -> Node:
        self._check_node(node_id)
        return self.inner.set_expiry(node_id, expiry)

    def rename_node(self, node_id: NodeID, new_name: str) -> Node:
        self._check_node(node_id)
        return self.inner.rename_node(node_id, new_name)

    def set_tags(self, node_id: NodeID, tags: Iterable[str]) -> Node:
        self._check_node(node_id)
        return self.inner.set_tags(node_id, tags)

    def approve_routes(self, node_id: NodeID, routes: Iterable[str | IPPrefix]) -> Node:
        self._check_node(node_id)
        return self.inner.approve_routes(node_id, routes)

    def move_node(self, node_id: NodeID, user_id: UserID) -> Node:
        self._check_node(node_id)
        self.get_user(user_id)
        return self.inner.move_node(node_id, user_id)

    def packet_filter(self, node_id: NodeID) -> Sequence[FilterRule]:
        self._check_node(node_id)
        return self.inner.packet_filter(node_id)

    def complete_registration(
        self, reg_id: str, user_id: UserID, method: RegisterMethod = RegisterMethod.CLI
    ) -> Node:
        """A pending registration names no tailnet until completed: the scoped admin who
        holds its id may admit it, for a user of the scope."""
        self.get_user(user_id)
        return self.inner.complete_registration(reg_id, user_id, method)

    def cancel_registration(self, reg_id: str, reason: str = "registration rejected") -> None:
        self.inner.cancel_registration(reg_id, reason)

    # ---- pre-auth keys and API keys ----------------------------------------------------

    def list_preauth_keys(
        self, user_id: UserID | None = None, tailnet: TailnetID | None = None
    ) -> list[PreAuthKey]:
        if tailnet is not None and tailnet != self.scope:
            return []
        return self.inner.list_preauth_keys(user_id, self.scope)

    def get_preauth_key(self, key_id: PreAuthKeyID) -> PreAuthKey:
        key = self.inner.get_preauth_key(key_id)
        if key.tailnet_id != self.scope:
            raise NotFound(f"pre-auth key {key_id} not found")
        return key

    def create_preauth_key(self, user_id: UserID, *, reusable: bool = False,
                           ephemeral: bool = False, expiration: datetime | None = None,
                           tags: Iterable[str] = ()) -> NewPreAuthKey:  # fmt: skip
        self.get_user(user_id)
        return self.inner.create_preauth_key(user_id, reusable=reusable, ephemeral=ephemeral,
                                             expiration=expiration, tags=tags)  # fmt: skip

    def expire_preauth_key(self, key_id: PreAuthKeyID) -> PreAuthKey:
        self.get_preauth_key(key_id)
        return self.inner.expire_preauth_key(key_id)

    def delete_preauth_key(self, key_id: PreAuthKeyID) -> None:
        self.get_preauth_key(key_id)
        self.inner.delete_preauth_key(key_id)

    def list_api_keys(self, tailnet: TailnetID | None = None) -> list[APIKey]:
        if tailnet is not None and tailnet != self.scope:
            return []
        return self.inner.list_api_keys(self.scope)

    def get_api_key(self, key_id_or_prefix: APIKeyID | str) -> APIKey:
        key = self.inner.get_api_key(key_id_or_prefix)
        if key.tailnet_id != self.scope:
            raise NotFound(f"API key {str(key_id_or_prefix)[:30]!r} not found")
        return key

    def create_api_key(
        self, expiration: datetime | None = None, tailnet: TailnetID | None = None
    ) -> NewAPIKey:
        """A scoped key makes keys of its own scope only (never a server admin key)."""
        if tailnet is not None and tailnet != self.scope:
            raise NotFound(f"tailnet {tailnet} not found")
        return self.inner.create_api_key(expiration, self.scope)

    def expire_api_key(self, key_id_or_prefix: APIKeyID | str) -> APIKey:
        self.get_api_key(key_id_or_prefix)
        return self.inner.expire_api_key(key_id_or_prefix)

    def delete_api_key(self, key_id_or_prefix: APIKeyID | str) -> None:
        self.get_api_key(key_id_or_prefix)
        self.inner.delete_api_key(key_id_or_prefix)

    # ---- policy (the scope's) ----------------------------------------------------------

    def _policy_tailnet(self, tailnet: TailnetID) -> TailnetID:
        """The default argument (the default tailnet) means the scope's own."""
        from meshscale.control.models import DEFAULT_TAILNET

        if tailnet not in (DEFAULT_TAILNET, self.scope):
            raise NotFound(f"tailnet {tailnet} not found")
        return self.scope

    @property
    def policy(self) -> str | None:
        return self.inner.policy_of(self.scope)

    @property
    def policy_version(self) -> PolicyVersion | None:
        return self.inner.policy_version_of(self.scope)

    def _t(self, tailnet: TailnetID | None) -> TailnetID:
        return self.scope if tailnet is None else self._policy_tailnet(tailnet)

    def policy_of(self, tailnet: TailnetID | None = None) -> str | None:  # type: ignore[override]
        return self.inner.policy_of(self._t(tailnet))

    def policy_version_of(  # type: ignore[override]
        self, tailnet: TailnetID | None = None
    ) -> PolicyVersion | None:
        return self.inner.policy_version_of(self._t(tailnet))

    def set_policy(  # type: ignore[override]
        self, data: str, source: str = "api", tailnet: TailnetID | None = None
    ) -> PolicyVersion:
        return self.inner.set_policy(data, source, self._t(tailnet))

    def check_policy(self, data: str, tailnet: TailnetID | None = None) -> list[str]:  # type: ignore[override]
        return self.inner.check_policy(data, self._t(tailnet))

    def policy_history(  # type: ignore[override]
        self, limit: int = 100, tailnet: TailnetID | None = None
    ) -> list[PolicyVersion]:
        return self.inner.policy_history(limit, self._t(tailnet))

    def rollback_policy(  # type: ignore[override]
        self, version: int, tailnet: TailnetID | None = None
    ) -> PolicyVersion:
        return self.inner.rollback_policy(version, self._t(tailnet))

    # ---- shares (of the scope's nodes, to the scope's users) ---------------------------

    def share_node(self, node_id: NodeID, user_id: UserID) -> Share:
        """A scoped key names only its own users, so sharing *into* another tailnet is a
        server admin's act; it may share its node with a user it can see (refused by
        State: same tailnet)."""
        self._check_node(node_id)
        self.get_user(user_id)
        return self.inner.share_node(node_id, user_id)

    def unshare_node(self, node_id: NodeID, user_id: UserID) -> None:
        self._check_node(node_id)
        self.inner.unshare_node(node_id, user_id)

    def list_shares(
        self, node_id: NodeID | None = None, user_id: UserID | None = None
    ) -> list[Share]:
        nodes = {n.id for n in self.list_nodes()}
        users = {u.id for u in self.list_users()}
        return [s for s in self.inner.list_shares(node_id, user_id)
                if s.node_id in nodes or s.user_id in users]  # fmt: skip
