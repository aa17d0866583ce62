"""The audit log of admin changes: recorded by the API for every caller (REST with an API key,
the unix socket, the console), stored in SQLite and PostgreSQL (migration 0005), listed by
``GET /api/v1/audit`` and ``meshscale-control audit list``."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from tests.control.test_api import call
from tests.control.test_db_postgres import postgres  # noqa: F401  (fixture)
from tests.control.test_main import Served, run, run_json, served  # noqa: F401  (fixture)

from meshscale.control.api import API
from meshscale.control.db import open_store
from meshscale.control.state import State

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def test_changes_are_recorded_reads_and_failures_are_not() -> None:
    state = State.open(":memory:", clock=lambda: T0)
    api = API(state)
    secret = state.create_api_key().secret
    prefix = state.list_api_keys()[0].prefix
    assert call(api, "POST", "/api/v1/user", {"name": "alice"}, token=secret)[0] == 200
    assert call(api, "POST", "/api/v1/user", {"name": "alice"}, token=secret)[0] == 409
    assert call(api, "GET", "/api/v1/user", token=secret)[0] == 200
    assert call(api, "POST", "/api/v1/user/1/rename/alicia", token=secret)[0] == 200
    status, body = call(api, "GET", "/api/v1/audit", token=secret)
    assert status == 200
    entries = body["entries"]
    assert [e["action"] for e in entries] == ["renameUser", "createUser"]  # newest first
    assert entries[0]["target"] == "newName=alicia,oldId=1"
    assert entries[1]["detail"] == {"name": "alice"}
    assert {e["actor"] for e in entries} == {f"apikey:{prefix}"}
    assert entries[0]["at"] == "2026-03-01T12:00:00Z"
    older = call(api, "GET", "/api/v1/audit", query={"before": entries[0]["id"]}, token=secret)
    assert [e["action"] for e in older[1]["entries"]] == ["createUser"]
    only = call(api, "GET", "/api/v1/audit", query={"action": "createUser"}, token=secret)
    assert len(only[1]["entries"]) == 1
    assert call(api, "GET", "/api/v1/audit")[0] == 401


def test_secrets_never_reach_the_log(tmp_path: Path) -> None:
    state = State.open(tmp_path / "db.sqlite", clock=lambda: T0)
    api = API(state, trusted=True)
    state.create_user("alice")
    _, body = call(api, "POST", "/api/v1/preauthkey", {"user": "alice", "reusable": True})
    _, created = call(api, "POST", "/api/v1/apikey", {})
    raw = (tmp_path / "db.sqlite").read_bytes()
    assert body["preAuthKey"]["key"].encode() not in raw
    assert created["apiKey"].encode() not in raw
    state.close()
    again = State.open(tmp_path / "db.sqlite", clock=lambda: T0)  # persisted
    assert [e.action for e in again.audit.list()] == ["createApiKey", "createPreAuthKey"]


def test_postgres_store(postgres: Callable[[], str]) -> None:  # noqa: F811
    state = State(open_store("postgres", dsn=postgres()), clock=lambda: T0)
    api = API(state, trusted=True)
    call(api, "POST", "/api/v1/user", {"name": "bob"})
    entries = state.audit.list(limit=5)
    assert [(e.action, e.detail, e.at) for e in entries] == [("createUser", {"name": "bob"}, T0)]
    state.close()


def _get(url: str, token: str | None = None) -> tuple[int, Any, dict[str, str]]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(req, timeout=10) as resp:
            return resp.status, resp.read(), dict(resp.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


@pytest.mark.slow
def test_cli_audit_list_and_served_console(
    served: Served,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert run(capsys, *served.cli("users", "create", "carol"))[0] == 0
    key = run(capsys, *served.cli("apikeys", "create"))[1].strip()
    base = f"http://127.0.0.1:{served.port}"
    # Over TCP with the key: recorded with the key's prefix and the client's address.
    req = urllib.request.Request(f"{base}/api/v1/user", data=json.dumps({"name": "dave"}).encode(),
                                 headers={"Authorization": f"Bearer {key}",
                                          "Content-Type": "application/json"})  # fmt: skip
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 200
    entries = run_json(capsys, served, "audit", "list")
    rows = entries if isinstance(entries, list) else entries["entries"]
    assert [e["action"] for e in rows][:3] == ["createUser", "createApiKey", "createUser"]
    assert rows[0]["actor"].startswith("apikey:") and rows[0]["source"] == "127.0.0.1"
    assert rows[2]["actor"].startswith("unix")
    code, out, _ = run(capsys, *served.cli("audit", "list", "--action", "createApiKey"))
    assert code == 0 and "createApiKey" in out and "createUser" not in out
    # The console is served at /admin; without a session nothing but the sign-in page.
    status, _, headers = _get(f"{base}/admin/machines")
    assert status == 303 and headers["Location"].startswith("/admin/login")
    status, body, _ = _get(f"{base}/admin/login")
    assert status == 200 and b'type="password"' in body
    assert _get(f"{base}/api/v1/node")[0] == 401


def test_reach_endpoint() -> None:
    from meshscale.key import MachinePublic, NodePublic
    from meshscale.policy import PolicyEngine

    state = State.open(":memory:", clock=lambda: T0, policy=PolicyEngine())
    dev = state.create_user("dev")
    for i, tags in ((1, ()), (2, ("tag:db",))):
        state.register_node(MachinePublic(bytes([i]) * 32), NodePublic(bytes([i]) * 32), dev.id,
                            {"Hostname": f"n{i}"}, tags=tags)  # fmt: skip
    rule = '{"action": "accept", "src": ["dev@"], "dst": ["tag:db:5432"]}'
    state.set_policy('{"tagOwners": {"tag:db": ["dev@"]}, "acls": [' + rule + "]}")
    api = API(state, trusted=True)

    def reach(**q: str) -> tuple[int, Any]:
        return call(api, "GET", "/api/v1/policy/reach", query=q)

    assert reach(src="n1", dst="n2", port="5432")[1]["allowed"] is True
    assert reach(src="n1", dst="100.64.0.2", port="22")[1]["allowed"] is False
    assert reach(src="1", dst="n2", port="5432", proto="udp")[1]["allowed"] is True
    assert reach(src="n1", dst="nosuch", port="1")[0] == 404
    assert reach(src="n1", dst="n2", port="70000")[0] == 400
    assert reach(src="n1", dst="n2", port="1", proto="gre")[0] == 400
