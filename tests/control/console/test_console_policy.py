"""The console's access-controls editor (check as you type, refusal with its message, save,
history with diff, rollback, reach tester) and audit log page, over the real PolicyEngine."""

from __future__ import annotations

import html
import json
import re
from datetime import UTC, datetime

import pytest
from tests.control.console.browser import Browser

from meshscale.control.api import API
from meshscale.control.console import Console, ConsoleSettings, build
from meshscale.control.state import State
from meshscale.key import MachinePublic, NodePublic
from meshscale.policy import PolicyEngine

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
DB_ONLY = """{
  // dev may reach the database on 5432 only
  "tagOwners": {"tag:db": ["dev@"]},
  "acls": [{"action": "accept", "src": ["dev@"], "dst": ["tag:db:5432"]}],
}"""
BAD = '{"acls": [{"action": "accept", "src": ["group:nosuch"], "dst": ["*:*"]}]}'


@pytest.fixture
def state() -> State:
    s = State.open(":memory:", clock=lambda: T0, policy=PolicyEngine())
    dev = s.create_user("dev")
    s.register_node(MachinePublic(b"\1" * 32), NodePublic(b"\1" * 32), dev.id, {"Hostname": "ws"})
    s.register_node(MachinePublic(b"\2" * 32), NodePublic(b"\2" * 32), dev.id, {"Hostname": "db"},
                    tags=["tag:db"])  # fmt: skip
    return s


@pytest.fixture
def console(state: State) -> Console:
    return build(state, API(state), ConsoleSettings(server_url="https://control.test"))


def signed_in(console: Console, state: State) -> Browser:
    b = Browser(console)
    assert b.sign_in(state.create_api_key().secret).status == 303
    return b


def check(b: Browser, text: str, token: str) -> dict[str, object]:
    r = b.send("POST", "/admin/api/policy/check", json.dumps({"policy": text}).encode(),
               [("content-type", "application/json"), ("x-csrf-token", token),
                ("origin", b.origin), ("sec-fetch-site", "same-origin")])  # fmt: skip
    assert r.status == 200, r.text
    out: dict[str, object] = json.loads(r.text)
    return out


def test_check_as_you_type_needs_session_and_token(console: Console, state: State) -> None:
    b = signed_in(console, state)
    token = b.get("/admin/policy").csrf()
    assert check(b, DB_ONLY, token)["ok"] is True
    bad = check(b, BAD, token)
    assert bad["ok"] is False and "group:nosuch" in str(bad["message"])
    r = b.send("POST", "/admin/api/policy/check", b'{"policy": "{}"}',
               [("content-type", "application/json")])  # fmt: skip
    assert r.status == 403  # no CSRF header
    assert state.audit.list() == []  # checks change nothing and are not logged


def test_save_refuses_invalid_keeps_text_then_saves_and_rolls_back(
    console: Console, state: State
) -> None:
    b = signed_in(console, state)
    token = b.get("/admin/policy").csrf()
    refused = b.post("/admin/policy", {"csrf": token, "policy": BAD})
    assert refused.status == 400
    assert "group:nosuch" in html.unescape(refused.text)
    assert html.escape(BAD) in refused.text or "group:nosuch" in refused.text
    assert state.policy is None
    crlf = DB_ONLY.replace("\n", "\r\n")  # what a browser sends for a textarea
    assert b.post("/admin/policy", {"csrf": token, "policy": crlf}).status == 303
    assert state.policy == DB_ONLY
    assert "policy saved (version" in b.get("/admin/policy").text
    assert b.post("/admin/policy", {"csrf": token, "policy": '{"acls": []}'}).status == 303
    page = b.get("/admin/policy")
    versions = re.findall(r'data-version="(\d+)"', page.text)
    assert versions  # rollback buttons for older versions
    diff = b.get(f"/admin/policy?diff={versions[0]}")
    assert 'class="del"' in diff.text and "tag:db:5432" in html.unescape(diff.text)
    old = int(versions[0])
    assert b.post("/admin/policy/rollback", {"csrf": token, "version": str(old)}).status == 303
    assert state.policy == DB_ONLY
    actions = [e.action for e in state.audit.list()]
    assert actions == ["rollbackPolicy", "setPolicy", "setPolicy"]
    assert all(e.actor.startswith("console:apikey:") for e in state.audit.list())


def test_reach_tester(console: Console, state: State) -> None:
    state.set_policy(DB_ONLY)
    b = signed_in(console, state)
    yes = b.get("/admin/policy?src=ws&dst=db&port=5432&proto=tcp")
    assert "ws can reach db on tcp/5432" in html.unescape(yes.text)
    no = b.get("/admin/policy?src=ws&dst=db&port=22&proto=tcp")
    assert "ws cannot reach db on tcp/22" in html.unescape(no.text)
    missing = b.get("/admin/policy?src=ws&dst=nosuch&port=22")
    assert "no machine" in html.unescape(missing.text)


def test_audit_page_shows_who_what_where(console: Console, state: State) -> None:
    b = signed_in(console, state)
    token = b.get("/admin/users").csrf()
    b.post("/admin/users", {"csrf": token, "name": "erin"})
    page = html.unescape(b.get("/admin/audit").text)
    assert "createUser" in page and "192.0.2.7" in page and "console:apikey:" in page
    assert '"name": "erin"' in page
    assert "createUser" not in html.unescape(b.get("/admin/audit?action=setPolicy").text)
