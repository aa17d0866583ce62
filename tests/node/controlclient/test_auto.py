"""The node's control loop against the real control app over loopback TCP."""

from __future__ import annotations

import asyncio
import random
import ssl
from contextlib import asynccontextmanager

import pytest

from meshscale.control.app import AppSettings, build_app
from meshscale.control.state import State
from meshscale.io.http import HTTPServer
from meshscale.key import DiscoPrivate, MachinePrivate, NodePrivate
from meshscale.node.controlclient import Auto, Keys
from meshscale.tailcfg import DERPMap, DERPNode, DERPRegion, Hostinfo

pytestmark = pytest.mark.slow

DERP = DERPMap(
    Regions={900: DERPRegion(900, "lab", "Lab", Nodes=[DERPNode("900a", 900, "derp.lab")])}
)


@asynccontextmanager
async def control(port: int = 0, tls: ssl.SSLContext | None = None):
    rng = random.Random(3)
    state = State.open(":memory:", rand=rng.randbytes, randbelow=rng.randrange)
    alice = state.create_user("alice", email="alice@example.org")
    key = state.create_preauth_key(alice.id, reusable=True).secret
    settings = AppSettings(server_url="http://127.0.0.1:1", base_domain="ts.example",
                           keepalive_interval=0.3, offline_grace=0.0, batch_delay=0.0)  # fmt: skip
    app = build_app(state, settings, DERP, control_key=MachinePrivate(b"\x05" * 32),
                    rand=rng.randbytes)  # type: ignore[arg-type]  # fmt: skip
    server = HTTPServer(app.router)
    srv = await server.start("127.0.0.1", port, ssl=tls)
    await app.start()
    try:
        yield state, key, srv.sockets[0].getsockname()[1]
    finally:
        await server.close(grace=0.2)
        await app.close()
        state.close()


class Node:
    def __init__(self, name: str, url: str, rng: random.Random) -> None:
        self.keys = Keys(MachinePrivate(rng.randbytes(32)), NodePrivate(rng.randbytes(32)),
                         DiscoPrivate(rng.randbytes(32)))  # fmt: skip
        self.states: list[tuple[str, str, str]] = []
        self.changed = asyncio.Event()
        self.auto = Auto(url, self.keys, hostinfo=lambda: Hostinfo(Hostname=name, OS="linux"),
                         on_netmap=lambda nm: self.changed.set(),
                         on_state=self._state)  # fmt: skip

    def _state(self, *a) -> None:
        self.states.append(a)
        self.changed.set()

    async def wait_for(self, cond, limit: float = 5.0) -> None:
        async with asyncio.timeout(limit):
            while not cond():
                self.changed.clear()
                await self.changed.wait()


def test_two_nodes_see_each_other_and_survive_control_restart():
    async def body():
        rng = random.Random(1)
        async with control() as (_state, key, port):
            url = f"http://127.0.0.1:{port}"
            a, b = Node("a", url, rng), Node("b", url, rng)
            a.auto.start(key)
            b.auto.start(key)
            await a.wait_for(lambda: len(a.auto.netmap.peers) == 1)
            await b.wait_for(lambda: len(b.auto.netmap.peers) == 1)
            assert ("Starting", "", "") in a.states
            assert a.auto.netmap.self_node.Addresses
            a.auto.update_endpoints(["203.0.113.5:41641"], [2])
            await b.wait_for(lambda: next(iter(b.auto.netmap.peers.values())).Endpoints
                             == ["203.0.113.5:41641"])  # fmt: skip
            addr = a.auto.netmap.self_node.Addresses
        # Control is gone: the netmap stays; the client keeps retrying.
        await asyncio.sleep(0.3)
        assert len(a.auto.netmap.peers) == 1 and not a.auto.connected
        async with control(port) as (_state, key, _):
            # A fresh control database does not know the node; re-use the key on restart.
            a.auto.auth_key = key
            await a.wait_for(lambda: a.auto.connected, limit=8)
        await a.auto.stop()
        await b.auto.stop()
        assert addr

    asyncio.run(asyncio.wait_for(body(), 30))


def test_bad_auth_key_reports_login_error():
    async def body():
        async with control() as (_state, _key, port):
            n = Node("x", f"http://127.0.0.1:{port}", random.Random(2))
            n.auto.start("hskey-auth-bogus")
            await n.wait_for(lambda: any(s[0] == "NeedsLogin" and s[2] for s in n.states))
            await n.auto.stop()
            err = next(s for s in n.states if s[2])[2]
            assert err.startswith("login: ") and "\n" not in err

    asyncio.run(asyncio.wait_for(body(), 20))


def test_interactive_login_waits_for_approval():
    async def body():
        async with control() as (state, _key, port):
            n = Node("i", f"http://127.0.0.1:{port}", random.Random(4))
            n.auto.start("")
            await n.wait_for(lambda: any(s[0] == "NeedsLogin" and s[1] for s in n.states))
            url = next(s[1] for s in n.states if s[1])
            assert url.startswith("http://127.0.0.1:1/register/")
            await asyncio.sleep(0.1)
            assert not n.auto.connected and n.auto.netmap.self_node is None
            state.complete_registration(url.rsplit("/", 1)[1], state.get_user_by_name("alice").id)
            await n.wait_for(lambda: n.auto.netmap.self_node is not None)
            assert n.auto.netmap.self_node.MachineAuthorized
            await n.auto.stop()

    asyncio.run(asyncio.wait_for(body(), 20))


def test_https_control_url(tmp_path, monkeypatch):
    from meshscale.lab.pki import LabCA

    ca = LabCA(tmp_path / "ca")
    cert, key = ca.issue(["localhost"], [])
    monkeypatch.setenv("SSL_CERT_FILE", str(ca.cert_path))
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)

    async def body():
        async with control(tls=tls) as (_state, key_, port):
            n = Node("t", f"https://localhost:{port}", random.Random(5))
            n.auto.start(key_)
            await n.wait_for(lambda: n.auto.netmap.self_node is not None)
            assert n.auto.connected
            await n.auto.stop()
            # /key must be verified: without the lab CA the login fails cleanly.
            monkeypatch.setenv("SSL_CERT_FILE", "/nonexistent")
            m = Node("u", f"https://localhost:{port}", random.Random(6))
            m.auto.start(key_)
            await asyncio.sleep(0.5)
            assert m.auto.netmap.self_node is None and "CERTIFICATE" in m.auto.last_error.upper()
            await m.auto.stop()

    asyncio.run(asyncio.wait_for(body(), 20))
