"""The admin console: sign-in, sessions, CSRF, headers and every page's actions, in-process.

Real State (SQLite in memory), real API and real Console; requests go straight into
Console.handle through a cookie-keeping client (tests/control/console/browser.py).
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from datetime import UTC, datetime, timedelta

import pytest
from tests.control.console.browser import Browser

from meshscale.control.api import API
from meshscale.control.console import Console, ConsoleSettings, LoginLimiter, SessionStore, build
from meshscale.control.state import State
from meshscale.key import MachinePrivate, NodePrivate


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def state(clock: Clock) -> State:
    return State.open(":memory:", clock=clock)


def make_console(state: State, clock: Clock, url: str = "https://control.test") -> Console:
    api = API(state)
    settings = ConsoleSettings(server_url=url, base_domain="ts.test")
    sessions, limiter = SessionStore(clock=clock), LoginLimiter(clock=clock)
    return build(state, api, settings, sessions=sessions, limiter=limiter)


@pytest.fixture
def console(state: State, clock: Clock) -> Console:
    return make_console(state, clock)


def add_node(state: State, name: str, user: str = "alice", routes: tuple[str, ...] = ()) -> int:
    try:
        uid = state.get_user_by_name(user).id
    except ValueError:
        uid = state.create_user(user).id
    mk = MachinePrivate.generate(hashlib.sha256(b"m" + name.encode()).digest()).public()
    nk = NodePrivate.generate(hashlib.sha256(b"n" + name.encode()).digest()).public()
    hostinfo = {"Hostname": name, "OS": "linux", "IPNVersion": "1.96.4",
                "RoutableIPs": list(routes)}  # fmt: skip
    node = state.register_node(mk, nk, uid, hostinfo=hostinfo)
    return int(node.id)


def signed_in(console: Console, state: State) -> Browser:
    b = Browser(console)
    resp = b.sign_in(state.create_api_key().secret)
    assert resp.status == 303, resp.text
    return b


def test_without_session_pages_redirect_and_json_is_401(console: Console, state: State) -> None:
    add_node(state, "secret-host")
    b = Browser(console)
    for page in ("/admin", "/admin/machines", "/admin/users", "/admin/machines/1",
                 "/admin/keys", "/admin/audit", "/admin/policy"):  # fmt: skip
        r = b.get(page)
        assert r.status == 303
        assert (
            r.header(
                "location",
            )
            is not None
        )
        assert "/admin/login" in (r.header("location") or "") or page == "/admin"
        assert "secret-host" not in r.text
    r = b.send("POST", "/admin/api/policy/check", b'{"policy": "{}"}')
    assert r.status == 401
    login = b.get("/admin/login")
    assert login.status == 200
    assert 'type="password"' in login.text
    assert "secret-host" not in login.text and "100.64" not in login.text


def test_sign_in_with_api_key_lists_machines(console: Console, state: State) -> None:
    add_node(state, "laptop")
    add_node(state, "server-one", user="bob", routes=("10.1.0.0/24",))
    b = Browser(console)
    assert b.sign_in("hskey-api-nope-nope").status == 401
    r = signed_in(console, state).get("/admin/machines")
    assert r.status == 200
    for text in ("laptop", "server-one", "laptop.ts.test", "100.64.0.1", "1.96.4",
                 "routes pending", "10.1.0.0/24"):  # fmt: skip
        assert text in r.text
    filtered = signed_in(console, state).get("/admin/machines?filter=routes-pending")
    assert "server-one" in filtered.text and "laptop.ts.test" not in filtered.text
    searched = signed_in(console, state).get("/admin/machines?q=bob")
    assert "server-one" in searched.text and "laptop.ts.test" not in searched.text


def test_session_cookie_flags_and_rotation(console: Console, state: State) -> None:
    b = Browser(console)
    key = state.create_api_key().secret
    b.sign_in(key)
    first = b.jar["__Host-meshscale_console"]
    r = b.sign_in(key)
    cookie = next(c for c in r.cookies_set() if c.startswith("__Host-meshscale_console="))
    for flag in ("Secure", "HttpOnly", "SameSite=Strict", "Path=/"):
        assert flag in cookie
    assert b.jar["__Host-meshscale_console"] != first  # rotated on login
    assert len(console.sessions) == 1  # the old one was deleted


def test_https_server_sets_secure_cookie_even_over_plain_http(
    console: Console, state: State
) -> None:
    b = Browser(console, origin="http://control.test")  # request arrived without TLS
    r = b.sign_in(state.create_api_key().secret)
    cookies = r.cookies_set()
    assert cookies and all("Secure" in c for c in cookies)


def test_http_server_cookie_has_no_host_prefix(state: State, clock: Clock) -> None:
    console = make_console(state, clock, "http://control.test")
    b = Browser(console, origin="http://control.test")
    r = b.sign_in(state.create_api_key().secret)
    assert any(c.startswith("meshscale_console=") for c in r.cookies_set())


def test_security_headers(console: Console) -> None:
    r = Browser(console).get("/admin/login")
    csp = r.header("content-security-policy") or ""
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert r.header("x-frame-options") == "DENY"
    assert r.header("x-content-type-options") == "nosniff"
    assert r.header("referrer-policy") == "no-referrer"
    assert r.header("strict-transport-security")
    assert "<script>" not in r.text and "style=" not in r.text
    js = Browser(console).get("/admin/static/console.js")
    assert js.status == 200 and "javascript" in (js.header("content-type") or "")


def test_csrf_and_cross_site_posts_are_refused(console: Console, state: State) -> None:
    b = signed_in(console, state)
    page = b.get("/admin/users")
    token = page.csrf()
    assert b.post("/admin/users", {"name": "mallory"}).status == 403  # no token
    assert b.post("/admin/users", {"name": "mallory", "csrf": "x" * 43}).status == 403
    evil = b.post("/admin/users", {"name": "mallory", "csrf": token},
                  origin="https://evil.test", site="cross-site")  # fmt: skip
    assert evil.status == 403
    assert not any(u.name == "mallory" for u in state.list_users())
    ok = b.post("/admin/users", {"name": "carol", "csrf": token})
    assert ok.status == 303
    assert any(u.name == "carol" for u in state.list_users())
    # GET has no effects
    assert b.get("/admin/users/1/delete").status == 404


def test_origin_null_is_same_origin_only_with_fetch_metadata(
    console: Console, state: State
) -> None:
    """Chromium sends ``Origin: null`` under Referrer-Policy: no-referrer."""
    b = signed_in(console, state)
    token = b.get("/admin/users").csrf()
    assert b.post("/admin/users", {"name": "u1", "csrf": token}, origin="null").status == 303
    refused = b.post("/admin/users", {"name": "u2", "csrf": token}, origin="null", site="none")
    assert refused.status == 403
    r = b.post("/admin/users", {"name": "u3", "csrf": token}, site="same-site")
    assert r.status == 403
    assert {"u1"} == {u.name for u in state.list_users()} & {"u1", "u2", "u3"}


def test_login_form_needs_its_token_and_is_rate_limited(console: Console, state: State) -> None:
    b = Browser(console)
    key = state.create_api_key().secret
    assert b.post("/admin/login", {"api_key": key}).status == 403  # no login token
    statuses = [b.sign_in("hskey-api-bad-bad").status for _ in range(11)]
    assert statuses[:10] == [401] * 10 and statuses[10] == 429


def test_idle_expiry_and_logout(console: Console, state: State, clock: Clock) -> None:
    b = signed_in(console, state)
    assert b.get("/admin/machines").status == 200
    clock.now += timedelta(minutes=31)
    assert b.get("/admin/machines").status == 303
    b = signed_in(console, state)
    token = b.get("/admin/machines").csrf()
    assert b.post("/admin/logout", {"csrf": token}).status == 303
    assert len(console.sessions) == 0
    assert b.get("/admin/machines").status == 303


def test_expiring_the_api_key_ends_its_sessions(console: Console, state: State) -> None:
    b = Browser(console)
    new = state.create_api_key()
    b.sign_in(new.secret)
    assert b.get("/admin/machines").status == 200
    state.expire_api_key(new.key.id)
    assert b.get("/admin/machines").status == 303


def test_machine_actions(console: Console, state: State) -> None:
    nid = add_node(state, "router", routes=("10.9.0.0/24", "0.0.0.0/0", "::/0"))
    b = signed_in(console, state)
    page = b.get(f"/admin/machines/{nid}")
    assert page.status == 200 and "10.9.0.0/24" in page.text and "(exit node)" in page.text
    token = page.csrf()
    base = f"/admin/machines/{nid}"
    assert (
        b.post(
            f"{base}/routes", {"csrf": token, "route": ["10.9.0.0/24", "0.0.0.0/0", "::/0"]}
        ).status
        == 303
    )
    assert set(state.get_node(nid).approved_routes) == {  # type: ignore[arg-type]
        ipaddress.ip_network(r) for r in ("10.9.0.0/24", "0.0.0.0/0", "::/0")
    }
    b.post(f"{base}/rename", {"csrf": token, "name": "edge"})
    assert state.get_node(nid).given_name == "edge"  # type: ignore[arg-type]
    renamed = state.audit.list(limit=1)[0]
    assert renamed.action == "renameNode" and renamed.detail["before"]["givenName"] == "router"
    r = b.post(f"{base}/rename", {"csrf": token, "name": "bad name!"})
    assert "error" in b.get(base).text or r.status == 303
    b.post(f"{base}/noexpiry", {"csrf": token})
    assert state.get_node(nid).expiry is None  # type: ignore[arg-type]
    b.post(f"{base}/expire", {"csrf": token})
    assert state.get_node(nid).expiry is not None  # type: ignore[arg-type]
    b.post(f"{base}/delete", {"csrf": token})
    assert state.list_nodes() == []


def test_preauth_key_shown_once(console: Console, state: State) -> None:
    state.create_user("alice")
    b = signed_in(console, state)
    token = b.get("/admin/keys").csrf()
    assert b.post("/admin/keys", {"csrf": token, "user": "alice", "reusable": "on",
                                  "hours": "2"}).status == 303  # fmt: skip
    shown = b.get("/admin/keys")
    full = re.search(r'id="secret-value">(hskey-auth-[^<]+)<', shown.text)
    assert full is not None
    assert state.validate_preauth_key(full.group(1)).reusable
    again = b.get("/admin/keys")
    assert full.group(1) not in again.text  # shown once
    kid = state.list_preauth_keys()[0].id
    b.post(f"/admin/keys/{kid}/expire", {"csrf": token})
    assert "expired" in b.get("/admin/keys").text


def test_api_keys_page(console: Console, state: State) -> None:
    b = signed_in(console, state)
    token = b.get("/admin/apikeys").csrf()
    b.post("/admin/apikeys", {"csrf": token, "days": "7"})
    page = b.get("/admin/apikeys")
    assert "hskey-api-" in page.text and len(state.list_api_keys()) == 2


def test_users_page_counts_machines(console: Console, state: State) -> None:
    add_node(state, "one")
    add_node(state, "two")
    page = signed_in(console, state).get("/admin/users")
    assert re.search(r"<td>alice</td>.*?<td>2</td>", page.text, re.S)


def test_paging_keeps_query(console: Console, state: State) -> None:
    for i in range(60):
        add_node(state, f"n{i:03d}x" + "y" * (i % 5))
    b = signed_in(console, state)
    first = b.get("/admin/machines?q=n0")
    assert "page 1 of 2" in first.text
    nxt = re.search(r'href="([^"]+)" rel="next"', first.text)
    assert nxt is not None and "q=n0" in nxt.group(1).replace("&amp;", "&")
    second = b.get(nxt.group(1).replace("&amp;", "&"))
    assert "page 2 of 2" in second.text


def test_a_tailnet_scoped_api_key_cannot_sign_in(console: Console, state: State) -> None:
    """The console acts as a server admin (issue #16 part 3): a key scoped to one tailnet
    is refused, and no session starts."""
    acme = state.create_tailnet("acme").id
    r = Browser(console).sign_in(state.create_api_key(tailnet=acme).secret)
    assert r.status == 403 and "scoped to one tailnet" in r.text
    assert len(console.sessions) == 0
