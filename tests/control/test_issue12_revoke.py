"""Issue #12 finding 2: expiry (and deletion) revoke. The attack runs against the in-process
``meshscale-control serve`` wiring on loopback: two real ts2021 clients with map streams and
a real DERP client on the embedded relay."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import pytest

from meshscale.control.config import config_from_mapping
from meshscale.control.server import Server
from meshscale.derphttp import DERPClient
from meshscale.key import NodePrivate
from meshscale.testing.controlclient import ControlClient, MapStream

pytestmark = pytest.mark.slow


async def _start(tmp_path: Path) -> Server:
    cfg = config_from_mapping(
        {
            "server_url": "http://127.0.0.1:1",
            "listen_addr": "127.0.0.1:0",
            "unix_socket": "ctl.sock",
            "derp": {"server": {"enabled": True, "verify_clients": True}},
        },
        tmp_path,
    )
    server = Server(cfg)
    await server.start()
    return server


async def _join(
    server: Server, authkey: str, name: str, ep: str
) -> tuple[ControlClient, MapStream]:
    port = server.bound["listen"][1]
    assert isinstance(port, int)
    c = ControlClient("127.0.0.1", port, hostname=name)
    await c.connect()
    resp = await c.register(authkey)
    assert not resp.Error
    s = await c.map_stream(endpoints=[ep])
    await s.next(wait=10)
    return c, s


async def _quiet(s: MapStream, wait: float) -> list[dict[str, object]]:
    """Every message in the next ``wait`` seconds (keep-alives left out)."""
    got: list[dict[str, object]] = []
    while True:
        try:
            msg = await s.next(wait=wait)
        except TimeoutError:
            return got
        if not msg.get("KeepAlive"):
            got.append(msg)


def test_expired_node_is_told_and_learns_nothing_more(tmp_path: Path) -> None:
    async def go() -> None:
        server = await _start(tmp_path)
        state = server.state
        assert state is not None
        try:
            user = state.create_user("alice")
            key = state.create_preauth_key(user.id, reusable=True)
            a, sa = await _join(server, key.secret, "a", "192.0.2.1:1")
            b, sb = await _join(server, key.secret, "b", "192.0.2.2:2")
            await _quiet(sa, 0.3)
            await _quiet(sb, 0.3)
            node_a = state.get_node_by_node_key(a.node_key.public())
            node_b = state.get_node_by_node_key(b.node_key.public())
            assert node_a is not None and node_b is not None

            state.expire_node(node_a.id, state.clock() - timedelta(seconds=1))  # nodes expire
            told = (await _quiet(sa, 0.5))[0]
            node = told["Node"]
            assert isinstance(node, dict)
            assert node["Expired"] is True
            assert not node.get("MachineAuthorized")  # omitted when false
            assert "Peers" not in told
            assert told["PeersRemoved"] == [int(node_b.id)]
            assert told["PacketFilters"] == {"base": []}

            # Peers' changes no longer reach it; its own updates are refused, not fanned out.
            assert await b.lite_update(["198.51.100.2:2"]) == 200
            assert await _quiet(sa, 0.5) == []
            assert await a.lite_update(["198.51.100.1:1"]) == 403
            seen_by_b = await _quiet(sb, 0.5)
            assert not any("198.51.100.1:1" in str(m) for m in seen_by_b)
            after = state.get_node_by_node_key(a.node_key.public())
            assert after is not None and after.endpoints == node_a.endpoints
            await a.close()
            await b.close()
        finally:
            await server.close()

    asyncio.run(asyncio.wait_for(go(), 60))


@pytest.mark.parametrize("how", ["expire", "delete"])
def test_embedded_derp_drops_revoked_node_within_a_second(tmp_path: Path, how: str) -> None:
    async def go() -> None:
        server = await _start(tmp_path)
        state = server.state
        assert state is not None and server.derp is not None
        try:
            user = state.create_user("alice")
            key = state.create_preauth_key(user.id, reusable=True)
            nk = NodePrivate.generate(bytes([9]) * 32)
            port = server.bound["listen"][1]
            c = ControlClient("127.0.0.1", int(port), node_key=nk, hostname="d")  # type: ignore[arg-type]
            await c.connect()
            assert not (await c.register(key.secret)).Error
            node = state.get_node_by_node_key(nk.public())
            assert node is not None
            derp = DERPClient(nk, f"http://127.0.0.1:{port}/derp")
            await derp.connect()
            assert server.derp.relay.client_count == 1
            if how == "expire":
                state.expire_node(node.id, state.clock() - timedelta(seconds=1))
            else:
                state.delete_node(node.id)
            t0 = asyncio.get_running_loop().time()

            async def drain() -> None:
                async with asyncio.timeout(3):
                    while True:
                        await derp.recv()

            with pytest.raises((ConnectionError, EOFError, asyncio.IncompleteReadError)):
                await drain()
            assert asyncio.get_running_loop().time() - t0 < 1.0
            assert server.derp.counters.revoked == 1
            assert server.derp.relay.client_count == 0
            await derp.close()
            again = DERPClient(nk, f"http://127.0.0.1:{port}/derp")
            with pytest.raises(Exception):  # noqa: B017 - refused at login now
                await again.connect()
            await again.close()
            await c.close()
        finally:
            await server.close()

    asyncio.run(asyncio.wait_for(go(), 60))


def test_revoked_oidc_identity_is_told_and_peers_learn_it(tmp_path: Path) -> None:
    """OIDC hardening: revoke_identity (what a refused returning sign-in calls) goes through
    the same expiry path: the user's node gets the expired map, its peer learns it."""

    async def go() -> None:
        server = await _start(tmp_path)
        state = server.state
        assert state is not None
        try:
            alice = state.sign_in_user("https://idp.example", "alice-1", name="alice")
            bob = state.create_user("bob")
            ka = state.create_preauth_key(alice.id)
            kb = state.create_preauth_key(bob.id)
            a, sa = await _join(server, ka.secret, "a", "192.0.2.1:1")
            b, sb = await _join(server, kb.secret, "b", "192.0.2.2:2")
            await _quiet(sa, 0.3)
            await _quiet(sb, 0.3)
            node_a = state.get_node_by_node_key(a.node_key.public())
            assert node_a is not None

            assert state.revoke_identity("https://idp.example", "alice-1") == (node_a.id,)
            told = (await _quiet(sa, 0.5))[0]
            me = told["Node"]
            assert isinstance(me, dict) and me["Expired"] is True
            assert "Peers" not in told
            seen = [p for m in await _quiet(sb, 0.5) for p in m.get("PeersChanged") or []]
            assert [p["Expired"] for p in seen if p["ID"] == int(node_a.id)] == [True]
            await a.close()
            await b.close()
        finally:
            await server.close()

    asyncio.run(asyncio.wait_for(go(), 60))
