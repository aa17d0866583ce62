"""The policy REST API over State with the real PolicyEngine: set, check, history,
rollback; refusals keep the policy in force and name line:column."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from meshscale.control.api import API, openapi_document
from meshscale.control.state import State
from meshscale.key import MachinePublic, NodePublic
from meshscale.policy import PolicyEngine

from .test_api import call

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)

GOOD = """{
  // dev may reach the database
  "groups": {"group:dev": ["dev@"],},
  "tagOwners": {"tag:db": ["dev@"]},
  "acls": [{"action": "accept", "src": ["group:dev"], "dst": ["tag:db:5432"]},],
}"""
BAD = """{
  "acls": [
    {"action": "accept",
     "src": ["group:nosuch"], "dst": ["*:*"]},
  ],
}"""
FAILING_TEST = """{
  "groups": {"group:dev": ["dev@"]},
  "acls": [{"action": "accept", "src": ["group:dev"], "dst": ["*:5432"]}],
  "tests": [{"src": "dev@", "accept": ["100.64.0.2:22"]}],
}"""


@pytest.fixture
def state() -> State:
    s = State.open(":memory:", clock=lambda: T0, policy=PolicyEngine())
    dev = s.create_user("dev")
    s.create_user("other")
    for i in (1, 2):
        s.register_node(
            MachinePublic(bytes([i]) * 32),
            NodePublic(bytes([i]) * 32),
            dev.id,
            {"Hostname": f"n{i}"},
        )
    return s


def test_set_history_rollback(state: State) -> None:
    api = API(state, trusted=True)
    status, body = call(api, "PUT", "/api/v1/policy", {"policy": GOOD})
    assert status == 200 and body["version"] == 1 and body["policy"] == GOOD
    assert call(api, "PUT", "/api/v1/policy", {"policy": '{"acls": []}'})[1]["version"] == 2
    hist = call(api, "GET", "/api/v1/policy/history")[1]["versions"]
    assert [(v["version"], v["source"]) for v in hist] == [(2, "api"), (1, "api")]
    assert hist[1]["policy"] == GOOD and hist[0]["updatedAt"]
    status, body = call(api, "POST", "/api/v1/policy/rollback", {"version": 1})
    assert status == 200 and body["version"] == 3 and body["policy"] == GOOD
    assert state.policy == GOOD
    hist = call(api, "GET", "/api/v1/policy/history", query={"limit": "1"})[1]["versions"]
    assert [(v["version"], v["source"]) for v in hist] == [(3, "rollback to 1")]
    status, body = call(api, "POST", "/api/v1/policy/rollback", {"version": 99})
    assert status == 404 and "version 99" in body["message"]
    assert call(api, "POST", "/api/v1/policy/rollback", {"version": "x"})[0] == 400
    file_mode = API(state, trusted=True, policy_writable=False)
    status, body = call(file_mode, "POST", "/api/v1/policy/rollback", {"version": 1})
    assert status == 400 and "policy.mode is file" in body["message"]


def test_bad_policy_refused_with_position_and_old_kept(state: State) -> None:
    api = API(state, trusted=True)
    call(api, "PUT", "/api/v1/policy", {"policy": GOOD})
    sub = state.subscribe()
    status, body = call(api, "PUT", "/api/v1/policy", {"policy": BAD})
    assert status == 400
    assert body["message"] == 'policy: undefined group "group:nosuch" at 4:14'
    assert state.policy == GOOD and sub.drain() == []
    assert len(state.policy_history()) == 1
    # A failing `tests` entry refuses the write too.
    status, body = call(api, "PUT", "/api/v1/policy", {"policy": FAILING_TEST})
    assert status == 400 and "100.64.0.2:22" in body["message"], body
    assert state.policy == GOOD


def test_check_reports_errors_without_applying(state: State) -> None:
    api = API(state, trusted=True)
    status, body = call(api, "POST", "/api/v1/policy/check", {"policy": BAD})
    assert status == 200
    assert body == {
        "valid": False,
        "warnings": [],
        "errors": [{"message": 'undefined group "group:nosuch" at 4:14', "line": 4, "column": 14}],
    }
    body = call(api, "POST", "/api/v1/policy/check", {"policy": FAILING_TEST})[1]
    assert not body["valid"] and "100.64.0.2:22" in body["errors"][0]["message"]
    body = call(api, "POST", "/api/v1/policy/check", {"policy": "{ nope"})[1]
    assert not body["valid"] and body["errors"][0]["line"] == 1
    body = call(api, "POST", "/api/v1/policy/check", {"policy": GOOD})[1]
    assert body == {"valid": True, "errors": [], "warnings": []}
    assert state.policy is None and state.policy_history() == []
    assert call(api, "POST", "/api/v1/policy/check", {"policy": 5})[0] == 400


def test_openapi_documents_policy_extension() -> None:
    doc = openapi_document()
    paths = doc["paths"]
    assert set(paths["/api/v1/policy"]) == {"get", "put"}
    assert "post" in paths["/api/v1/policy/check"]
    assert "get" in paths["/api/v1/policy/history"]
    body = paths["/api/v1/policy/rollback"]["post"]["requestBody"]
    assert body["content"]["application/json"]["schema"]["properties"] == {
        "version": {"type": "integer"}
    }
    schemas = doc["components"]["schemas"]
    assert set(schemas["Policy"]["properties"]) == {"policy", "updatedAt", "version"}
    assert set(schemas["PolicyCheck"]["properties"]) == {"valid", "errors", "warnings"}


def test_large_policies_fit_and_oversized_are_refused(state: State) -> None:
    api = API(state, trusted=True)
    hosts = ",\n".join(f'    "h{i}": "10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}"'
                       for i in range(4000))  # fmt: skip
    big = '{\n  "hosts": {\n' + hosts + '\n  },\n  "acls": []\n}\n'
    assert 100_000 < len(big) < 1_000_000
    status, body = call(api, "PUT", "/api/v1/policy", {"policy": big})
    assert status == 200, body
    huge = {"policy": " " * (10 * 1024 * 1024)}
    status, body = call(api, "PUT", "/api/v1/policy", huge)
    assert status == 413 and "larger than" in body["message"]
    assert state.policy == big


def test_policy_and_version_survive_a_restart(tmp_path: Path) -> None:
    db = tmp_path / "db.sqlite"
    s = State.open(db, clock=lambda: T0, policy=PolicyEngine())
    s.create_user("dev")
    v = s.set_policy(GOOD)
    s.close()
    s = State.open(db, clock=lambda: T0, policy=PolicyEngine())
    assert s.policy == GOOD and s.policy_version == v
    assert [h.version for h in s.policy_history()] == [1]
    s.close()
