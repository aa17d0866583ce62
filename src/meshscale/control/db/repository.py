"""The storage interface State writes through.

State keeps the live snapshot in memory; a Store only loads it at start and persists each
change before State acknowledges it. Two implementations share ``schema.sql`` and the
migrations: :class:`~meshscale.control.db.sqlite.SQLiteStore` and
:class:`~meshscale.control.db.postgres.PostgresStore`. Every method is one short
statement or transaction.

Ids are assigned by the database (``insert_*`` return them). ``consume_preauth_key`` is
the only compare-and-set: it must be atomic across connections and processes.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

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


class StoreError(Exception):
    """The database failed or holds data this version cannot read."""


class IntegrityError(StoreError):
    """A write broke a uniqueness or reference rule the schema enforces."""


@dataclass(frozen=True, slots=True)
class PolicyVersion:
    """One accepted policy text; ``version`` counts up from 1 and is never reused."""

    version: int
    data: str
    created_at: datetime
    source: str = ""  # who wrote it: "api", "file", "rollback to N", "migrated"


@dataclass(frozen=True, slots=True)
class Snapshot:
    users: list[User]
    nodes: list[Node]
    preauth_keys: list[PreAuthKey]
    api_keys: list[APIKey]
    policy: str | None
    policy_version: PolicyVersion | None = None  # the newest version (its data is policy)
    shares: list[Share] = field(default_factory=list)
    tailnets: list[Tailnet] = field(default_factory=list)
    # Every tailnet's policy text and newest version (policy and policy_version above are
    # the default tailnet's); a tailnet without a row has no policy.
    policies: dict[TailnetID, tuple[str, PolicyVersion | None]] = field(default_factory=dict)


class Store(Protocol):
    def load(self) -> Snapshot: ...

    def transaction(self, durable: bool = True) -> AbstractContextManager[None]:
        """Group writes: all of them commit together or none does. May nest.

        ``durable=False`` is for soft state that clients send again on every reconnect
        (endpoints, Hostinfo, online/last_seen): the commit may skip the disk flush, so a
        power loss can lose it, a process crash cannot. Nested blocks follow the outermost.
        """
        ...

    def close(self) -> None: ...

    # users
    def insert_user(self, user: User) -> UserID: ...
    def update_user(self, user: User) -> None: ...
    def delete_user(self, user_id: UserID) -> None: ...

    # nodes
    def insert_node(self, node: Node) -> NodeID: ...
    def update_node(self, node: Node) -> None: ...
    def delete_node(self, node_id: NodeID) -> None: ...

    # pre-auth keys
    def insert_preauth_key(self, key: PreAuthKey) -> PreAuthKeyID: ...
    def update_preauth_key(self, key: PreAuthKey) -> None: ...
    def delete_preauth_key(self, key_id: PreAuthKeyID) -> None: ...
    def consume_preauth_key(self, key_id: PreAuthKeyID) -> bool:
        """Mark a single-use key used if it is not yet; False if someone else did."""
        ...

    # API keys
    def insert_api_key(self, key: APIKey) -> APIKeyID: ...
    def update_api_key(self, key: APIKey) -> None: ...
    def delete_api_key(self, key_id: APIKeyID) -> None: ...

    # tailnets (delete: the caller checks it holds no user)
    def insert_tailnet(self, tailnet: Tailnet) -> TailnetID: ...
    def update_tailnet(self, tailnet: Tailnet) -> None: ...
    def delete_tailnet(self, tailnet_id: TailnetID) -> None: ...

    # policy (one per tailnet)
    def set_policy(
        self, data: str, source: str = "", tailnet: TailnetID = DEFAULT_TAILNET
    ) -> PolicyVersion:
        """Make ``data`` the tailnet's policy and append it to the history as a new
        version (version numbers are shared by every tailnet: they never repeat)."""
        ...

    def policy_history(
        self, limit: int = 100, tailnet: TailnetID = DEFAULT_TAILNET
    ) -> list[PolicyVersion]:
        """The tailnet's newest ``limit`` versions, newest first."""
        ...

    def policy_version(
        self, version: int, tailnet: TailnetID = DEFAULT_TAILNET
    ) -> PolicyVersion | None: ...

    # node sharing (a row goes when its node or user does: ON DELETE CASCADE)
    def insert_share(self, share: Share) -> None: ...
    def delete_share(self, node_id: NodeID, user_id: UserID) -> bool:
        """Remove one share; False if there was none."""
        ...
