"""CountingStore: a Store that counts the calls that may change the database.

State's write block (:meth:`~meshscale.control.state.core.StateCore.write`) compares the
count before and after a failed block: a failure before any store write (a bad key, a name
taken: what a client can cause at will) needs no reload of the in-memory snapshot; a
failure after one does, because the transaction rolled back what memory already holds.
"""

from __future__ import annotations

from contextlib import AbstractContextManager

from meshscale.control.db.repository import PolicyVersion, Snapshot, Store
from meshscale.control.models import (
    DEFAULT_TAILNET,
    APIKey,
    APIKeyID,
    Node,
    NodeID,
    PreAuthKey,
    PreAuthKeyID,
    Share,
    Tailnet,
    TailnetID,
    User,
    UserID,
)


class CountingStore:
    """Wraps ``inner``; ``writes`` counts the mutating calls made through it."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.writes = 0

    def load(self) -> Snapshot:
        return self.inner.load()

    def transaction(self, durable: bool = True) -> AbstractContextManager[None]:
        return self.inner.transaction(durable)

    def close(self) -> None:
        self.inner.close()

    def insert_user(self, user: User) -> UserID:
        self.writes += 1
        return self.inner.insert_user(user)

    def update_user(self, user: User) -> None:
        self.writes += 1
        self.inner.update_user(user)

    def delete_user(self, user_id: UserID) -> None:
        self.writes += 1
        self.inner.delete_user(user_id)

    def insert_node(self, node: Node) -> NodeID:
        self.writes += 1
        return self.inner.insert_node(node)

    def update_node(self, node: Node) -> None:
        self.writes += 1
        self.inner.update_node(node)

    def delete_node(self, node_id: NodeID) -> None:
        self.writes += 1
        self.inner.delete_node(node_id)

    def insert_preauth_key(self, key: PreAuthKey) -> PreAuthKeyID:
        self.writes += 1
        return self.inner.insert_preauth_key(key)

    def update_preauth_key(self, key: PreAuthKey) -> None:
        self.writes += 1
        self.inner.update_preauth_key(key)

    def delete_preauth_key(self, key_id: PreAuthKeyID) -> None:
        self.writes += 1
        self.inner.delete_preauth_key(key_id)

    def consume_preauth_key(self, key_id: PreAuthKeyID) -> bool:
        self.writes += 1
        return self.inner.consume_preauth_key(key_id)

    def insert_api_key(self, key: APIKey) -> APIKeyID:
        self.writes += 1
        return self.inner.insert_api_key(key)

    def update_api_key(self, key: APIKey) -> None:
        self.writes += 1
        self.inner.update_api_key(key)

    def delete_api_key(self, key_id: APIKeyID) -> None:
        self.writes += 1
        self.inner.delete_api_key(key_id)

    def insert_tailnet(self, tailnet: Tailnet) -> TailnetID:
        self.writes += 1
        return self.inner.insert_tailnet(tailnet)

    def update_tailnet(self, tailnet: Tailnet) -> None:
        self.writes += 1
        self.inner.update_tailnet(tailnet)

    def delete_tailnet(self, tailnet_id: TailnetID) -> None:
        self.writes += 1
        self.inner.delete_tailnet(tailnet_id)

    def set_policy(
        self, data: str, source: str = "", tailnet: TailnetID = DEFAULT_TAILNET
    ) -> PolicyVersion:
        self.writes += 1
        return self.inner.set_policy(data, source, tailnet)

    def policy_history(
        self, limit: int = 100, tailnet: TailnetID = DEFAULT_TAILNET
    ) -> list[PolicyVersion]:
        return self.inner.policy_history(limit, tailnet)

    def policy_version(
        self, version: int, tailnet: TailnetID = DEFAULT_TAILNET
    ) -> PolicyVersion | None:
        return self.inner.policy_version(version, tailnet)

    def insert_share(self, share: Share) -> None:
        self.writes += 1
        self.inner.insert_share(share)

    def delete_share(self, node_id: NodeID, user_id: UserID) -> bool:
        self.writes += 1
        return self.inner.delete_share(node_id, user_id)
