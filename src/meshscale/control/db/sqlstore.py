"""What the SQLite and PostgreSQL stores share: the repository methods and nesting of
transactions, written once in portable SQL.

A backend supplies the connection (``self.conn``, rows readable by column name), its
named-parameter spelling (:meth:`SQLStore._param`), its error classes, how a new row's id
comes back (:meth:`SQLStore._insert`) and how an outermost transaction begins and ends.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from meshscale.control import models
from meshscale.control.db import codec
from meshscale.control.db.audit import AuditRows
from meshscale.control.db.repository import IntegrityError, PolicyVersion, Snapshot, StoreError


class SQLStore(AuditRows):
    """:class:`~meshscale.control.db.repository.Store` over a DB-API style connection."""

    conn: Any
    # Set by the backend: its driver's integrity error and base error classes.
    _integrity_error: type[BaseException]
    _db_error: type[BaseException]

    def __init__(self) -> None:
        self._depth = 0
        self._lock = threading.RLock()

    # -- what a backend provides --------------------------------------------------------

    @staticmethod
    def _param(name: str) -> str:
        """The driver's spelling of the named parameter ``name``."""
        raise NotImplementedError

    @staticmethod
    def _describe(exc: BaseException) -> str:
        return str(exc)

    def _begin(self, durable: bool) -> None:
        raise NotImplementedError

    def _end(self, statement: str, durable: bool) -> None:
        """Run ``COMMIT`` or ``ROLLBACK`` for the outermost transaction."""
        raise NotImplementedError

    def _insert(self, table: str, row: dict[str, Any]) -> int:
        raise NotImplementedError

    # -- shared -------------------------------------------------------------------------

    def close(self) -> None:
        self.conn.close()

    @contextmanager
    def transaction(self, durable: bool = True) -> Iterator[None]:
        with self._lock:
            outer = self._depth == 0
            if outer:
                self._begin(durable)
            self._depth += 1
            try:
                yield
            except BaseException:
                self._depth -= 1
                if outer:
                    self._end("ROLLBACK", durable)
                raise
            self._depth -= 1
            if outer:
                self._end("COMMIT", durable)

    def _exec(self, sql: str, params: tuple[Any, ...] | dict[str, Any] = ()) -> Any:
        with self._lock:
            try:
                return self.conn.execute(sql, params)
            except self._integrity_error as exc:
                raise IntegrityError(self._describe(exc)) from exc
            except self._db_error as exc:
                raise StoreError(self._describe(exc)) from exc

    def _insert_sql(self, table: str, row: dict[str, Any]) -> str:
        marks = ", ".join(self._param(c) for c in row)
        return f"INSERT INTO {table} ({', '.join(row)}) VALUES ({marks})"

    def _update(self, table: str, row_id: int, row: dict[str, Any]) -> None:
        p = self._param
        sets = ", ".join(f"{c} = {p(c)}" for c in row)
        cur = self._exec(f"UPDATE {table} SET {sets} WHERE id = {p('id')}", {**row, "id": row_id})
        if cur.rowcount != 1:
            raise StoreError(f"{table} row {row_id} vanished")

    def _delete(self, table: str, row_id: int) -> None:
        self._exec(f"DELETE FROM {table} WHERE id = {self._param('id')}", {"id": row_id})

    def load(self) -> Snapshot:
        with self._lock:
            users = [codec.user_from_row(r) for r in self._exec("SELECT * FROM users")]
            nodes = [codec.node_from_row(r) for r in self._exec("SELECT * FROM nodes")]
            paks = [
                codec.preauth_key_from_row(r) for r in self._exec("SELECT * FROM pre_auth_keys")
            ]
            apis = [codec.api_key_from_row(r) for r in self._exec("SELECT * FROM api_keys")]
            tailnets = [codec.tailnet_from_row(r) for r in self._exec("SELECT * FROM tailnets")]
            policies: dict[models.TailnetID, tuple[str, PolicyVersion | None]] = {}
            for row in self._exec("SELECT tailnet_id, data FROM policies"):
                tid, text = models.TailnetID(int(row["tailnet_id"])), str(row["data"])
                newest = self.policy_history(1, tid)
                policies[tid] = (text, newest[0] if newest and newest[0].data == text else None)
            shares = [_share(r) for r in self._exec("SELECT * FROM shares")]
        default = policies.get(models.DEFAULT_TAILNET)
        policy, version = (None, None) if default is None else default
        return Snapshot(users, nodes, paks, apis, policy, version, shares, tailnets, policies)

    def insert_tailnet(self, tailnet: models.Tailnet) -> models.TailnetID:
        return models.TailnetID(self._insert("tailnets", codec.tailnet_to_row(tailnet)))

    def update_tailnet(self, tailnet: models.Tailnet) -> None:
        self._update("tailnets", tailnet.id, codec.tailnet_to_row(tailnet))

    def delete_tailnet(self, tailnet_id: models.TailnetID) -> None:
        self._delete("tailnets", tailnet_id)

    def insert_user(self, user: models.User) -> models.UserID:
        return models.UserID(self._insert("users", codec.user_to_row(user)))

    def update_user(self, user: models.User) -> None:
        self._update("users", user.id, codec.user_to_row(user))

    def delete_user(self, user_id: models.UserID) -> None:
        self._delete("users", user_id)

    def insert_node(self, node: models.Node) -> models.NodeID:
        return models.NodeID(self._insert("nodes", codec.node_to_row(node)))

    def update_node(self, node: models.Node) -> None:
        self._update("nodes", node.id, codec.node_to_row(node))

    def delete_node(self, node_id: models.NodeID) -> None:
        self._delete("nodes", node_id)

    def insert_preauth_key(self, key: models.PreAuthKey) -> models.PreAuthKeyID:
        return models.PreAuthKeyID(self._insert("pre_auth_keys", codec.preauth_key_to_row(key)))

    def update_preauth_key(self, key: models.PreAuthKey) -> None:
        self._update("pre_auth_keys", key.id, codec.preauth_key_to_row(key))

    def delete_preauth_key(self, key_id: models.PreAuthKeyID) -> None:
        self._delete("pre_auth_keys", key_id)

    def consume_preauth_key(self, key_id: models.PreAuthKeyID) -> bool:
        # The conditional UPDATE is the arbiter between racing registrations, also across
        # processes: SQLite serialises writers, PostgreSQL's row lock makes the second
        # UPDATE wait for the first; either way only one sees used = 0.
        cur = self._exec(
            "UPDATE pre_auth_keys SET used = 1 "
            f"WHERE id = {self._param('id')} AND used = 0 AND reusable = 0",
            {"id": key_id},
        )
        return bool(cur.rowcount == 1)

    def insert_api_key(self, key: models.APIKey) -> models.APIKeyID:
        return models.APIKeyID(self._insert("api_keys", codec.api_key_to_row(key)))

    def update_api_key(self, key: models.APIKey) -> None:
        self._update("api_keys", key.id, codec.api_key_to_row(key))

    def delete_api_key(self, key_id: models.APIKeyID) -> None:
        self._delete("api_keys", key_id)

    def set_policy(
        self, data: str, source: str = "", tailnet: models.TailnetID = models.DEFAULT_TAILNET
    ) -> PolicyVersion:
        p = self._param
        now = datetime.now(UTC).replace(microsecond=0)
        at = codec.ts_to_db(now)
        with self.transaction():
            self._exec(
                "INSERT INTO policies(tailnet_id, data, updated_at) "
                f"VALUES ({p('t')}, {p('data')}, {p('at')}) "
                "ON CONFLICT(tailnet_id) DO UPDATE SET data = excluded.data, "
                "updated_at = excluded.updated_at",
                {"t": int(tailnet), "data": data, "at": at},
            )
            vid = self._insert(
                "policy_versions",
                {"data": data, "created_at": at, "source": source[:200], "tailnet_id": tailnet},
            )
        return PolicyVersion(vid, data, now, source[:200])

    def insert_share(self, share: models.Share) -> None:
        p = self._param
        self._exec(
            f"INSERT INTO shares(node_id, user_id, created_at) VALUES ({p('n')}, {p('u')}, "
            f"{p('at')})",
            {"n": share.node_id, "u": share.user_id, "at": codec.ts_to_db(share.created_at)},
        )

    def delete_share(self, node_id: models.NodeID, user_id: models.UserID) -> bool:
        p = self._param
        cur = self._exec(
            f"DELETE FROM shares WHERE node_id = {p('n')} AND user_id = {p('u')}",
            {"n": node_id, "u": user_id},
        )
        return bool(cur.rowcount == 1)

    def policy_history(
        self, limit: int = 100, tailnet: models.TailnetID = models.DEFAULT_TAILNET
    ) -> list[PolicyVersion]:
        rows = self._exec(
            "SELECT id, data, created_at, source FROM policy_versions "
            f"WHERE tailnet_id = {self._param('t')} "
            f"ORDER BY id DESC LIMIT {max(0, int(limit))}",
            {"t": int(tailnet)},
        )
        return [_policy_version(r) for r in rows]

    def policy_version(
        self, version: int, tailnet: models.TailnetID = models.DEFAULT_TAILNET
    ) -> PolicyVersion | None:
        p = self._param
        row = self._exec(
            "SELECT id, data, created_at, source FROM policy_versions "
            f"WHERE id = {p('id')} AND tailnet_id = {p('t')}",
            {"id": version, "t": int(tailnet)},
        ).fetchone()
        return None if row is None else _policy_version(row)


def _share(row: Any) -> models.Share:
    nid, uid = models.NodeID(int(row["node_id"])), models.UserID(int(row["user_id"]))
    return models.Share(nid, uid, codec.ts_from_db(str(row["created_at"])))


def _policy_version(row: Any) -> PolicyVersion:
    at = codec.ts_from_db(str(row["created_at"]))
    assert at is not None
    return PolicyVersion(int(row["id"]), str(row["data"]), at, str(row["source"]))
