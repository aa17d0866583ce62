"""Issue #12 findings 4 and 7: no 500 from hostile input on any endpoint, and path segments
decoded once. One in-process ``meshscale-control serve`` (REST API, /verify, /health, /key,
/ts2021 and the Noise routes) runs on its own event loop thread; hypothesis-made bodies go
to every route over real loopback sockets."""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
from collections.abc import Awaitable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshscale.control.api import ROUTES
from meshscale.control.config import config_from_mapping
from meshscale.control.server import Server
from meshscale.testing.controlclient import ControlClient

pytestmark = pytest.mark.slow

T = TypeVar("T")


class Served:
    """The server on a private loop thread; ``run`` executes a coroutine there."""

    def __init__(self, tmp: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        cfg = config_from_mapping(
            {"server_url": "http://127.0.0.1:1", "listen_addr": "127.0.0.1:0",
             "unix_socket": "ctl.sock", "derp": {"server": {"enabled": False}}},
            tmp,
        )  # fmt: skip
        self.server = Server(cfg)
        self.run(self.server.start())
        port = self.server.bound["listen"][1]
        assert isinstance(port, int)
        self.port = port
        assert self.server.state is not None
        self.state = self.server.state
        self.api_key = self.state.create_api_key().secret
        self.noise = ControlClient("127.0.0.1", port)
        self.run(self.noise.connect())

    def run(self, coro: Awaitable[T], timeout: float = 20) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)  # type: ignore[arg-type]

    def http(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request(method, path, body=body or None,
                         headers={"Authorization": f"Bearer {self.api_key}"})  # fmt: skip
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def close(self) -> None:
        self.run(self.noise.close())
        self.run(self.server.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    s = Served(tmp_path_factory.mktemp("fuzz"))
    try:
        yield s
    finally:
        s.close()


NASTY = [b"[" * 3000, b"{" * 3000, b'{"a":' * 3000, b'{"NodePublic": 5}', b"\xff\xfe",
         b'{"name": 5, "user": [], "id": {}}', b'{"expiration": "x", "reusable": "y"}',
         b"null", b"[]", b'"s"', b"1e999999", b'{"Version": "x"}',
         b'{"Version": 130, "NodeKey": 5}', b'{"Version": 130, "Hostinfo": [1]}']  # fmt: skip

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
field_names = st.sampled_from(
    ["name", "user", "id", "key", "expiration", "reusable", "ephemeral", "aclTags", "tags",
     "routes", "policy", "NodePublic", "Version", "NodeKey", "Hostinfo", "Endpoints", "Stream",
     "OmitPeers", "Auth", "Followup", "Expiry", "DiscoKey", "Compress", "displayName", "prefix"]
)  # fmt: skip
bodies = st.one_of(
    st.dictionaries(field_names, json_values, max_size=6).map(lambda d: json.dumps(d).encode()),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=64),
    st.sampled_from(NASTY),
)
segment = st.one_of(st.sampled_from(["1", "0", "-1", "99999999999999999999", "%25", "%2F", "x"]),
                    st.text("abc%/.:", max_size=6))  # fmt: skip


def _fill(path: str, seg: str) -> str:
    return "/".join(seg or "x" if p.startswith("{") else p for p in path.split("/"))


NOISE_ROUTES = ["/machine/register", "/machine/map"]
PLAIN_ROUTES = [("POST", "/verify"), ("GET", "/health"), ("GET", "/key?v=130")]


def test_every_route_answers_nasty_bodies_below_500(served: Served) -> None:
    for route in ROUTES:
        for body in NASTY:
            status, _ = served.http(route.method, _fill(route.path, "1"), body)
            assert status < 500, (route.method, route.path, body[:20])
    for method, path in PLAIN_ROUTES:
        for body in NASTY:
            assert served.http(method, path, body)[0] < 500
    for path in NOISE_ROUTES:
        for body in NASTY:
            status, _ = served.run(served.noise.request("POST", path, body))
            assert status < 500, (path, body[:20])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(route=st.sampled_from(ROUTES), seg=segment, body=bodies)
def test_fuzz_rest_routes_never_500(served: Served, route: Any, seg: str, body: bytes) -> None:
    status, _ = served.http(route.method, _fill(route.path, seg), body)
    assert status < 500


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(path=st.sampled_from(NOISE_ROUTES), body=bodies)
def test_fuzz_noise_routes_never_500(served: Served, path: str, body: bytes) -> None:
    status, _ = served.run(served.noise.request("POST", path, body))
    assert status < 500


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=bodies)
def test_fuzz_verify_never_500(served: Served, body: bytes) -> None:
    assert served.http("POST", "/verify", body)[0] in (200, 400, 413)


def test_rename_decodes_the_path_once(served: Served) -> None:
    user = served.state.create_user("pct")
    status, raw = served.http("POST", f"/api/v1/user/{user.id}/rename/a%252Fb")
    assert status == 400  # the name is "a%2Fb", which names are not allowed to be
    assert "a%2Fb" in json.loads(raw)["message"]
    assert served.state.get_user(user.id).name == "pct"
    status, raw = served.http("POST", f"/api/v1/user/{user.id}/rename/pct2")
    assert status == 200, raw
    assert served.state.get_user(user.id).name == "pct2"
