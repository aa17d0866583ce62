"""The /api/v1 REST API: routes, Headscale JSON shapes, auth, errors, OpenAPI."""

from __future__ import annotations

import asyncio
import json
import re
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openapi_spec_validator import validate

from meshscale.control.api import API, MAX_API_BODY, ROUTES, openapi_document
from meshscale.control.state import State
from meshscale.io.http import Headers, HTTPServer, Request, Router
from meshscale.key import MachinePublic, NodePublic

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def call(
    api: API,
    method: str,
    path: str,
    body: Any = None,
    query: dict[str, str] | None = None,
    token: str | None = None,
    raw: bytes | None = None,
) -> tuple[int, Any]:
    headers = [("authorization", f"Bearer {token}")] if token else []
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else b"")
    req = Request(method, path, urlencode(query or {}), dict(query or {}), Headers(headers), data)
    resp = asyncio.run(api.handle(req))
    assert isinstance(resp.body, bytes)
    return resp.status, json.loads(resp.body) if resp.body else None


@pytest.fixture
def state() -> State:
    return State.open(":memory:", clock=lambda: T0)


@pytest.fixture
def api(state: State) -> API:
    return API(state, trusted=True)


def test_user_routes(api: API) -> None:
    status, body = call(api, "POST", "/api/v1/user", {"name": "alice", "email": "a@x.org"})
    assert status == 200
    assert body["user"] == {
        "id": "1",
        "name": "alice",
        "createdAt": "2026-03-01T12:00:00Z",
        "displayName": "",
        "email": "a@x.org",
        "providerId": "",
        "provider": "",
        "profilePicUrl": "",
        "tailnetId": "1",  # meshscale: the tailnet the user belongs to (issue #16)
    }
    assert call(api, "POST", "/api/v1/user", {"name": "alice"})[0] == 409
    assert call(api, "POST", "/api/v1/user/1/rename/alicia")[1]["user"]["name"] == "alicia"
    assert call(api, "GET", "/api/v1/user", query={"name": "alicia"})[1]["users"][0]["id"] == "1"
    assert call(api, "GET", "/api/v1/user", query={"name": "nobody"})[1] == {"users": []}
    assert call(api, "DELETE", "/api/v1/user/1") == (200, {})
    status, body = call(api, "DELETE", "/api/v1/user/1")
    assert status == 404
    assert body == {"code": 5, "message": "user 1 not found", "details": []}


def test_preauth_key_and_node_routes(api: API, state: State) -> None:
    call(api, "POST", "/api/v1/user", {"name": "alice"})
    status, body = call(
        api,
        "POST",
        "/api/v1/preauthkey",
        {
            "user": "alice",
            "reusable": True,
            "expiration": "2026-03-02T12:00:00Z",
            "aclTags": ["tag:ci"],
        },
    )
    assert status == 200, body
    pak = body["preAuthKey"]
    assert pak["key"].startswith("hskey-auth-") and not pak["key"].endswith("***")
    assert pak["expiration"] == "2026-03-02T12:00:00Z"
    assert pak["aclTags"] == ["tag:ci"]
    assert pak["user"]["name"] == "alice"
    listed = call(api, "GET", "/api/v1/preauthkey", query={"user": "1"})[1]["preAuthKeys"]
    assert listed[0]["key"].endswith("-***")  # the full key is shown once only
    node = state.register_with_preauth_key(
        pak["key"],
        MachinePublic(b"m" * 32),
        NodePublic(b"n" * 32),
        {"Hostname": "ci-runner", "RoutableIPs": ["10.0.0.0/8"]},
    )
    nodes = call(api, "GET", "/api/v1/node")[1]["nodes"]
    assert len(nodes) == 1
    n = nodes[0]
    assert n["id"] == str(node.id)
    assert n["machineKey"] == "mkey:" + (b"m" * 32).hex()
    assert n["ipAddresses"] == ["100.64.0.1", "fd7a:115c:a1e0::1"]
    assert n["givenName"] == "ci-runner"
    assert n["registerMethod"] == "REGISTER_METHOD_AUTH_KEY"
    assert n["tags"] == ["tag:ci"]
    assert n["availableRoutes"] == ["10.0.0.0/8"] and n["approvedRoutes"] == []
    assert n["preAuthKey"]["id"] == pak["id"]
    assert call(api, "GET", "/api/v1/node", query={"user": "alice"})[1]["nodes"][0]["id"] == "1"
    path = f"/api/v1/node/{node.id}"
    assert call(api, "POST", f"{path}/rename/build-1")[1]["node"]["givenName"] == "build-1"
    assert call(api, "POST", f"{path}/tags", {"tags": ["tag:x"]})[1]["node"]["tags"] == ["tag:x"]
    routes = call(api, "POST", f"{path}/approve_routes", {"routes": ["10.0.0.0/8"]})[1]
    assert routes["node"]["subnetRoutes"] == []  # approved, but an offline router serves nothing
    state.set_online(node.id, True)
    routes = call(api, "POST", f"{path}/approve_routes", {"routes": ["10.0.0.0/8"]})[1]
    assert routes["node"]["subnetRoutes"] == ["10.0.0.0/8"]
    assert call(api, "POST", f"{path}/expire")[1]["node"]["expiry"] == "2026-03-01T12:00:00Z"
    assert call(api, "POST", f"{path}/expire", {"disableExpiry": True})[1]["node"]["expiry"] is None
    call(api, "POST", "/api/v1/user", {"name": "bob"})
    assert call(api, "POST", f"{path}/user", {"user": "bob"})[1]["node"]["user"]["name"] == "bob"
    assert call(api, "POST", "/api/v1/preauthkey/expire", {"id": pak["id"]}) == (200, {})
    assert call(api, "DELETE", path) == (200, {})
    assert call(api, "GET", path)[0] == 404
    assert call(api, "DELETE", "/api/v1/preauthkey", query={"id": pak["id"]}) == (200, {})


def test_register_pending_node(api: API, state: State) -> None:
    call(api, "POST", "/api/v1/user", {"name": "alice"})
    reg = state.begin_registration(
        MachinePublic(b"m" * 32), NodePublic(b"n" * 32), {"Hostname": "laptop"}
    )
    listed = call(api, "GET", "/api/v1/registration")[1]["registrations"]
    assert [r["id"] for r in listed] == [reg.id]
    status, body = call(
        api,
        "POST",
        "/api/v1/node/register",
        query={"user": "alice", "key": f"http://x/register/{reg.id}"},
    )
    assert status == 200, body
    assert body["node"]["registerMethod"] == "REGISTER_METHOD_CLI"
    assert reg.node is not None and reg.done
    assert (
        call(api, "POST", "/api/v1/node/register", query={"user": "alice", "key": reg.id})[0] == 404
    )


def test_api_key_routes(api: API) -> None:
    status, body = call(api, "POST", "/api/v1/apikey", {})
    assert status == 200 and body["apiKey"].startswith("hskey-api-")
    keys = call(api, "GET", "/api/v1/apikey")[1]["apiKeys"]
    assert keys[0]["prefix"] == body["apiKey"][len("hskey-api-") :][:12]
    assert call(api, "POST", "/api/v1/apikey/expire", {"prefix": keys[0]["prefix"]}) == (200, {})
    assert call(api, "DELETE", f"/api/v1/apikey/{keys[0]['prefix']}") == (200, {})
    assert call(api, "GET", "/api/v1/apikey")[1] == {"apiKeys": []}


def test_auth_required_on_untrusted_listeners(state: State) -> None:
    api = API(state, trusted=False)
    assert call(api, "GET", "/api/v1/user")[0] == 401
    assert call(api, "GET", "/api/v1/user", token="hskey-api-wrong")[1]["code"] == 16
    secret = state.create_api_key().secret
    assert call(api, "GET", "/api/v1/user", token=secret) == (200, {"users": []})
    # Health and the OpenAPI document are public.
    assert call(api, "GET", "/api/v1/health")[0] == 200
    assert call(api, "GET", "/api/v1/openapi.json")[0] == 200
    state.expire_api_key(secret)
    status, body = call(api, "GET", "/api/v1/user", token=secret)
    assert (status, body["message"]) == (401, "API key expired")


@pytest.mark.parametrize(
    ("method", "path", "raw", "status"),
    [
        ("GET", "/api/v1/nothing", b"", 404),
        ("PATCH", "/api/v1/user", b"", 405),
        ("POST", "/api/v1/user", b"{not json", 400),
        ("POST", "/api/v1/user", b"[1, 2]", 400),
        ("POST", "/api/v1/user", b'{"name": 5}', 400),
        ("POST", "/api/v1/user", b'{"name": "bad name"}', 400),
        ("POST", "/api/v1/user", b" " * (MAX_API_BODY + 1), 413),
        ("GET", "/api/v1/node/abc", b"", 400),
        ("GET", "/api/v1/node/99999999999999999999999", b"", 400),
        ("POST", "/api/v1/preauthkey", b'{"user": "ghost"}', 404),
        ("POST", "/api/v1/preauthkey", b'{"user": ""}', 400),
        ("POST", "/api/v1/apikey", b'{"expiration": "tomorrow"}', 400),
        ("POST", "/api/v1/node/1/tags", b'{"tags": "tag:x"}', 400),
    ],
)
def test_errors_are_clean_json(api: API, method: str, path: str, raw: bytes, status: int) -> None:
    got, body = call(api, method, path, raw=raw)
    assert got == status
    assert set(body) == {"code", "message", "details"}
    assert "\n" not in body["message"] and "Traceback" not in body["message"]


@pytest.mark.slow
def test_openapi_document_validates_and_lists_every_route(api: API) -> None:
    doc = openapi_document()
    validate(doc)
    listed = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    assert listed == {(r.method, r.path) for r in ROUTES}
    ids = [op["operationId"] for ops in doc["paths"].values() for op in ops.values()]
    assert len(ids) == len(set(ids))
    status, served = call(api, "GET", "/api/v1/openapi.json")
    assert status == 200 and served == doc
    # Every path parameter in a route is declared in the document.
    for route in ROUTES:
        op = doc["paths"][route.path][route.method.lower()]
        declared = {p["name"] for p in op["parameters"] if p["in"] == "path"}
        assert declared == set(re.findall(r"\{(\w+)\}", route.path))


def test_over_real_http(state: State) -> None:
    """The API mounted on the shared h11 server, over loopback, with Bearer auth."""
    secret = state.create_api_key().secret

    async def main() -> list[bytes]:
        router = Router()
        API(state).mount(router)
        server = HTTPServer(router)
        srv = await server.start("127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        out: list[bytes] = []
        try:
            for auth in ("", f"Authorization: Bearer {secret}\r\n"):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                body = b'{"name": "alice"}'
                writer.write(
                    f"POST /api/v1/user HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: {len(body)}"
                    "\r\nConnection: close\r\n\r\n".encode()
                    + body
                )
                out.append(await asyncio.wait_for(reader.read(), 5))
                writer.close()
                await writer.wait_closed()
        finally:
            await server.close()
        return out

    denied, created = asyncio.run(main())
    assert denied.startswith(b"HTTP/1.1 401")
    assert created.startswith(b"HTTP/1.1 200")
    assert b'"name":"alice"' in created


_SEGMENTS = st.sampled_from(
    [
        "user",
        "node",
        "preauthkey",
        "apikey",
        "1",
        "2",
        "0",
        "rename",
        "x",
        "expire",
        "tags",
        "register",
        "approve_routes",
        "policy",
        "health",
        "%2F",
        "",
        "..",
        "99999999999999999999",
    ]
)
_BODIES = st.one_of(
    st.binary(max_size=64),
    st.dictionaries(
        st.sampled_from(
            [
                "name",
                "user",
                "id",
                "key",
                "prefix",
                "tags",
                "routes",
                "expiration",
                "expiry",
                "reusable",
                "ephemeral",
                "aclTags",
                "disableExpiry",
            ]
        ),
        st.one_of(
            st.none(),
            st.booleans(),
            st.integers(),
            st.text(max_size=12),
            st.lists(st.text(max_size=12), max_size=3),
        ),
        max_size=4,
    ).map(lambda d: json.dumps(d).encode()),
)


@pytest.mark.slow
@settings(max_examples=150, deadline=None)
@given(
    st.sampled_from(["GET", "POST", "DELETE", "PUT", "PATCH"]),
    st.lists(_SEGMENTS, max_size=4),
    _BODIES,
    st.dictionaries(
        st.sampled_from(["user", "id", "key", "name"]), st.text(max_size=8), max_size=2
    ),
)
def test_any_request_gets_a_clean_answer(
    method: str, segments: list[str], body: bytes, query: dict[str, str]
) -> None:
    state = State.open(":memory:", clock=lambda: T0)
    uid = state.create_user("alice").id
    state.create_preauth_key(uid)
    state.register_node(
        MachinePublic(b"m" * 32),
        NodePublic(b"n" * 32),
        uid,
        {"Hostname": "x", "RoutableIPs": ["10.0.0.0/8"]},
    )
    state.create_api_key()
    api = API(state, trusted=True)
    path = "/api/v1/" + "/".join(segments)
    status, payload = call(api, method, path, raw=body, query=query)
    assert status in (200, 400, 404, 405, 409, 413), (status, payload)
    assert isinstance(payload, dict)
    state.close()


def test_policy_routes(state: State) -> None:
    api = API(state, trusted=True)
    assert call(api, "GET", "/api/v1/policy") == (
        200,
        {"policy": "", "updatedAt": None, "version": None},
    )
    sub = state.subscribe()
    assert call(api, "PUT", "/api/v1/policy", {"policy": '{"acls": []}'})[0] == 200
    got = call(api, "GET", "/api/v1/policy")[1]
    assert (got["policy"], got["version"]) == ('{"acls": []}', 1) and got["updatedAt"]
    assert [type(c).__name__ for c in sub.drain()] == ["PolicyChanged"]
    file_mode = API(state, trusted=True, policy_writable=False)
    status, body = call(file_mode, "PUT", "/api/v1/policy", {"policy": "{}"})
    assert status == 400 and "policy.mode is file" in body["message"]


def test_share_routes_refuse_bad_input_cleanly(api: API, state: State) -> None:
    """Node sharing over REST (issue #16 part 2): with one tailnet every share is refused
    with a 400 naming why; unknown nodes/users are 404s, bad ids 400s, never a 500."""
    alice = state.create_user("alice")
    n = state.register_node(MachinePublic(b"\x01" * 32), NodePublic(b"\x02" * 32), alice.id)
    status, body = call(api, "POST", f"/api/v1/node/{n.id}/share", {"user": "alice"})
    assert status == 400 and "own tailnet" in body["message"]
    assert call(api, "POST", "/api/v1/node/999/share", {"user": "alice"})[0] == 404
    assert call(api, "POST", f"/api/v1/node/{n.id}/share", {"user": "nobody"})[0] == 404
    assert call(api, "POST", "/api/v1/node/x/share", {"user": "alice"})[0] == 400
    assert call(api, "POST", f"/api/v1/node/{n.id}/share", {"user": 3})[0] == 400
    assert call(api, "POST", f"/api/v1/node/{n.id}/unshare", {"user": "alice"})[0] == 404
    assert call(api, "GET", "/api/v1/share") == (200, {"shares": []})
    assert call(api, "GET", "/api/v1/share", query={"node": "x"})[0] == 400
