"""The control protocol end to end over loopback: our test client against build_app.

Real TCP, the HTTP/1.1 upgrade, Noise, HTTP/2, register with a pre-auth key, map streams,
deltas when peers join, change endpoints, go offline and are deleted.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from meshscale.control.app import AppSettings, ControlApp, build_app
from meshscale.control.state import State
from meshscale.io.http import HTTPServer
from meshscale.key import MachinePrivate
from meshscale.tailcfg import (
    LOGOUT_EXPIRY,
    MIN_SUPPORTED_CAPABILITY_VERSION,
    DERPMap,
    DERPNode,
    DERPRegion,
    unsupported_client,
)
from meshscale.testing.controlclient import ClientError, ControlClient
from meshscale.testing.controlclient import http_get as _http_get

pytestmark = pytest.mark.slow

DERP = DERPMap(
    Regions={900: DERPRegion(900, "lab", "Lab", Nodes=[DERPNode("900a", 900, "derp.lab")])}
)


@dataclass
class Env:
    state: State
    app: ControlApp
    port: int
    rng: random.Random
    key: str  # a reusable pre-auth key of alice

    def client(self, name: str, **kw: object) -> ControlClient:
        return ControlClient("127.0.0.1", self.port, hostname=name, rand=self.rng.randbytes, **kw)  # type: ignore[arg-type]


@asynccontextmanager
async def control_env(**overrides: object) -> AsyncIterator[Env]:
    rng = random.Random(7)
    state = State.open(":memory:", rand=rng.randbytes, randbelow=rng.randrange)
    alice = state.create_user("alice", email="alice@example.org")
    key = state.create_preauth_key(alice.id, reusable=True).secret
    settings = AppSettings(
        server_url="http://127.0.0.1:1", base_domain="ts.example", nameservers=("192.0.2.53",),
        keepalive_interval=0.3, offline_grace=0.0, batch_delay=0.0,
    )  # fmt: skip
    app = build_app(
        state,
        settings,
        DERP,
        control_key=MachinePrivate(rng.randbytes(32)),
        rand=rng.randbytes,
        **overrides,
    )  # type: ignore[arg-type]
    server = HTTPServer(app.router)
    srv = await server.start("127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    await app.start()
    try:
        yield Env(state, app, port, rng, key)
    finally:
        await server.close(grace=0.5)
        await app.close()
        state.close()


def run(coro: Callable[[], Awaitable[None]]) -> None:
    async def bounded() -> None:
        async with asyncio.timeout(20):
            await coro()

    asyncio.run(bounded())


def test_key_endpoint() -> None:
    async def body() -> None:
        async with control_env() as env:
            status, raw = await _http_get("127.0.0.1", env.port, "/key?v=130")
            assert status == 200
            assert env.app.control_key.public().text().encode() in raw
            assert b'"legacyPublicKey":"mkey:000' in raw
            assert (await _http_get("127.0.0.1", env.port, "/key"))[0] == 400
            assert (await _http_get("127.0.0.1", env.port, "/key?v=30")) == (200, b"")

    run(body)


def test_register_and_map_deltas() -> None:
    async def body() -> None:
        async with control_env() as env:
            a = env.client("alpha")
            await a.connect()
            assert a.early_payload is not None
            assert b"chalpub:" in a.early_payload
            resp = await a.register(env.key)
            assert resp.Error == ""
            assert resp.MachineAuthorized
            assert resp.Login.LoginName == "alice@example.org"
            sa = await a.map_stream(endpoints=["192.0.2.1:41641"], preferred_derp=900)
            first = await sa.next()
            assert first["Node"]["Name"] == "alpha.ts.example."
            assert first["Node"]["MachineAuthorized"] is True
            assert first["Node"]["HomeDERP"] == 900
            assert first["Node"]["Endpoints"] == ["192.0.2.1:41641"]
            assert "Peers" not in first
            assert list(first["DERPMap"]["Regions"]) == ["900"]
            assert first["PacketFilters"]["base"][0]["SrcIPs"] == ["*"]
            assert first["DNSConfig"]["Routes"]["ts.example"] == []
            assert first["UserProfiles"][0]["LoginName"] == "alice@example.org"
            a_id = first["Node"]["ID"]

            b = env.client("bravo")
            await b.connect()
            assert (await b.register(env.key)).MachineAuthorized
            sb = await b.map_stream(endpoints=["192.0.2.2:41641"])
            first_b = await sb.next()
            assert [p["ID"] for p in first_b["Peers"]] == [a_id]
            assert first_b["Peers"][0]["Key"] == a.node_key.public().text()
            assert first_b["Peers"][0]["DiscoKey"] == a.disco_key.public().text()
            b_id = first_b["Node"]["ID"]

            delta = await sa.next()
            while "PeersChanged" not in delta:  # online/endpoint patches may come first
                delta = await sa.next()
            assert [p["ID"] for p in delta["PeersChanged"]] == [b_id]
            assert "Peers" not in delta
            # B's endpoints arrive in the same node or in a later patch.
            eps = delta["PeersChanged"][0].get("Endpoints")
            while eps is None:
                nxt = await sa.next()
                eps = next((p["Endpoints"] for p in nxt.get("PeersChangedPatch", [])
                            if "Endpoints" in p), None)  # fmt: skip
            assert eps == ["192.0.2.2:41641"]

            assert await b.lite_update(["198.51.100.7:1234"]) == 200
            patch = await sa.next()
            while not any("Endpoints" in p for p in patch.get("PeersChangedPatch", [])):
                patch = await sa.next()
            assert patch["PeersChangedPatch"][0]["NodeID"] == b_id
            assert patch["PeersChangedPatch"][0]["Endpoints"] == ["198.51.100.7:1234"]

            await b.close()
            off = await sa.next()
            while off.get("OnlineChange", {}).get(str(b_id)) is not False:
                off = await sa.next()
            assert off["PeerSeenChange"] == {str(b_id): True}

            env.state.delete_node(b_id)
            gone = await sa.next()
            while "PeersRemoved" not in gone:
                gone = await sa.next()
            assert gone["PeersRemoved"] == [b_id]
            await a.close()

    run(body)


def test_keepalives_flow() -> None:
    async def body() -> None:
        async with control_env() as env:
            a = env.client("alpha")
            await a.connect()
            await a.register(env.key)
            s = await a.map_stream()
            await s.next()
            ka = await s.next(wait=3, skip_keepalive=False)
            assert ka == {"KeepAlive": True}  # nothing else changed since the full map
            ka = await s.next(wait=3, skip_keepalive=False)
            assert ka == {"KeepAlive": True}
            await a.close()

    run(body)


def test_node_key_bound_to_machine_key() -> None:
    async def body() -> None:
        async with control_env() as env:
            a = env.client("alpha")
            await a.connect()
            await a.register(env.key)
            # Another machine presenting alpha's node key is refused on both endpoints.
            thief = env.client("thief", node_key=a.node_key)
            await thief.connect()
            with pytest.raises(ClientError, match="401"):
                await thief.register(env.key)
            with pytest.raises(ClientError, match="404"):
                await thief.map_stream()
            await a.close()
            await thief.close()

    run(body)


def test_bad_auth_key_and_single_use() -> None:
    async def body() -> None:
        async with control_env() as env:
            user = env.state.get_user_by_name("alice")
            once = env.state.create_preauth_key(user.id).secret
            a = env.client("alpha")
            await a.connect()
            assert (await a.register("hskey-auth-nope")).Error == "invalid authkey"
            assert (await a.register(once)).MachineAuthorized
            # Restart of the same machine re-sends the used key: a no-op, not an error.
            assert (await a.register(once)).MachineAuthorized
            b = env.client("bravo")
            await b.connect()
            assert (await b.register(once)).Error == "authkey already used"
            await a.close()
            await b.close()

    run(body)


def test_logout_expires_node() -> None:
    async def body() -> None:
        async with control_env() as env:
            a = env.client("alpha")
            await a.connect()
            await a.register(env.key)
            resp = await a.register(expiry=LOGOUT_EXPIRY)
            assert resp.NodeKeyExpired
            # After logout the old key is expired: a plain login asks for a new key.
            assert (await a.register()).NodeKeyExpired
            await a.close()

    run(body)


def test_interactive_registration() -> None:
    async def body() -> None:
        async with control_env() as env:
            c = env.client("charlie")
            await c.connect()
            resp = await c.register()
            assert resp.AuthURL.startswith("http://127.0.0.1:1/register/")
            reg_id = resp.AuthURL.rsplit("/", 1)[1]
            status, page = await _http_get("127.0.0.1", env.port, f"/register/{reg_id}")
            assert status == 200
            assert f"nodes register --user USERNAME --key {reg_id}".encode() in page
            waiter = asyncio.create_task(c.register(followup=resp.AuthURL))
            await asyncio.sleep(0.05)
            assert not waiter.done()
            env.state.complete_registration(reg_id, env.state.get_user_by_name("alice").id)
            done = await asyncio.wait_for(waiter, 5)
            assert done.MachineAuthorized
            assert done.AuthURL == ""
            await c.close()

    run(body)


def test_node_key_rotation_keeps_node() -> None:
    async def body() -> None:
        async with control_env() as env:
            a = env.client("alpha")
            await a.connect()
            await a.register(env.key)
            before = env.state.get_node_by_machine_key(a.machine_key.public())
            old = a.node_key
            from meshscale.key import NodePrivate

            a.node_key = NodePrivate(env.rng.randbytes(32))
            assert (await a.register(old_node_key=old)).MachineAuthorized
            after = env.state.get_node_by_machine_key(a.machine_key.public())
            assert after is not None and before is not None
            assert after.id == before.id
            assert after.node_key == a.node_key.public()
            await a.close()

    run(body)


def test_other_endpoints_and_old_clients() -> None:
    async def body() -> None:
        async with control_env() as env:
            a = env.client("alpha")
            await a.connect()
            assert (await a.request("POST", "/machine/set-dns", b"{}"))[0] == 501
            assert (await a.request("POST", "/machine/nope", b"{}"))[0] == 404
            assert (await a.request("GET", "/machine/map"))[0] == 405
            assert (await a.request("POST", "/machine/register", b"{nope"))[0] == 400
            status, raw = await a.request("POST", "/machine/register", b'{"Version":108}')
            assert status == 400
            assert raw.decode().strip() == unsupported_client(108)
            assert "v1.78 or newer" in raw.decode()
            await a.close()
            # Below the floor, the handshake's error frame names the minimum (the client
            # shows it as its login error).
            old = env.client("old", version=MIN_SUPPORTED_CAPABILITY_VERSION - 1)
            with pytest.raises(Exception, match=r"needs Tailscale v1\.78 or newer"):
                await old.connect()

    run(body)


def test_clients_before_home_derp_also_get_the_legacy_derp_string() -> None:
    """v1.78 (capability version 109) reads a peer's home region only from "DERP"."""

    async def body() -> None:
        async with control_env() as env:
            new = env.client("new")
            old = env.client("old", version=MIN_SUPPORTED_CAPABILITY_VERSION)
            for c in (new, old):
                await c.connect()
                assert (await c.register(env.key)).MachineAuthorized
            s_new = await new.map_stream(preferred_derp=900)
            await s_new.next()
            s_old = await old.map_stream(preferred_derp=900)
            first_old = await s_old.next()
            assert first_old["Node"]["DERP"] == "127.3.3.40:900"
            assert first_old["Peers"][0]["HomeDERP"] == 900
            assert first_old["Peers"][0]["DERP"] == "127.3.3.40:900"
            s_new2 = await new.map_stream(preferred_derp=900)  # a full map naming old
            peer = (await s_new2.next())["Peers"][0]
            assert peer["HomeDERP"] == 900 and "DERP" not in peer
            # A client older than the floor is refused at map time as well.
            body = b'{"Version":108,"NodeKey":"' + new.node_key.public().text().encode() + b'"}'
            status, raw = await new.request("POST", "/machine/map", body)
            assert status == 400 and b"v1.78" in raw
            await new.close()
            await old.close()

    run(body)


def test_upgrade_header_checks() -> None:
    async def body() -> None:
        async with control_env() as env:
            for extra in (
                "",
                "Upgrade: websocketx\r\n",
                "Upgrade: tailscale-control-protocol\r\nX-Tailscale-Handshake: !!!\r\n",
            ):
                r, w = await asyncio.open_connection("127.0.0.1", env.port)
                w.write(
                    f"POST /ts2021 HTTP/1.1\r\nHost: x\r\n{extra}Content-Length: 0\r\n\r\n".encode()
                )
                await w.drain()
                head = await r.read(100)
                assert head.startswith(b"HTTP/1.1 400"), head
                w.close()

    run(body)


def test_expired_node_self_view() -> None:
    async def body() -> None:
        async with control_env() as env:
            a = env.client("alpha")
            await a.connect()
            await a.register(env.key)
            node = env.state.get_node_by_machine_key(a.machine_key.public())
            assert node is not None
            env.state.expire_node(node.id, at=datetime.now(UTC) - timedelta(minutes=1))
            s = await a.map_stream()
            first = await s.next()
            assert "MachineAuthorized" not in first["Node"]
            assert first["Node"]["Expired"] is True
            await a.close()

    run(body)


def test_key_expiry_reaches_node_and_peers() -> None:
    async def body() -> None:
        async with control_env(expiry_check_interval=0.05) as env:
            a, b = env.client("alpha"), env.client("bravo")
            for c in (a, b):
                await c.connect()
                await c.register(env.key)
            sa = await a.map_stream()
            sb = await b.map_stream()
            await sa.next()
            await sb.next()
            node = env.state.get_node_by_machine_key(b.machine_key.public())
            assert node is not None
            env.state.set_expiry(node.id, datetime.now(UTC) + timedelta(seconds=0.3))
            # The write itself is one delta; the expiry passing later is another.
            seen_expired = False
            while not seen_expired:
                msg = await sa.next(wait=5)
                seen_expired = any(p.get("Expired") for p in msg.get("PeersChanged", []))
            self_expired = False
            while not self_expired:
                msg = await sb.next(wait=5)
                self_expired = msg.get("Node", {}).get("Expired", False)
            assert "MachineAuthorized" not in msg["Node"]
            await a.close()
            await b.close()

    run(body)


def test_settings_from_control_config(tmp_path) -> None:
    from meshscale.control.config import load_config

    cfg_file = tmp_path / "config.yaml"
    cfg_file.write_text(
        "server_url: https://ctl.example.com\n"
        "dns:\n"
        "  magic_dns: true\n"
        "  base_domain: tail.example\n"
        "  nameservers:\n"
        "    global: [192.0.2.53]\n"
        "    split:\n"
        "      corp.example: [10.0.0.53]\n"
        "  extra_records:\n"
        "    - {name: app.tail.example, type: A, value: 100.64.0.9}\n"
    )
    cfg = load_config(cfg_file, state_dir=tmp_path)
    s = AppSettings.from_config(cfg, offline_grace=0.0)
    assert s.server_url == "https://ctl.example.com"
    assert s.offline_grace == 0.0
    dns = s.dns_config()
    assert dns.Routes["tail.example"] == []
    assert [r.Addr for r in dns.Routes["corp.example"]] == ["10.0.0.53"]
    assert [r.Addr for r in dns.Resolvers] == ["192.0.2.53"]  # override_local_dns defaults on
    assert dns.ExtraRecords[0].Value == "100.64.0.9"
    assert "64.100.in-addr.arpa" in dns.Routes


def test_fanout_tick_writes_deltas_in_order() -> None:
    """With coalescing on, the batcher's tick writes deltas to idle streams itself (one
    DATA frame each, no task wake-up); every stream still sees every change, in order."""

    async def body() -> None:
        async with control_env() as env:
            env.app.map.batch_delay = 0.002
            clients, streams = [], []
            for i in range(4):
                c = env.client(f"n{i}")
                await c.connect()
                assert (await c.register(env.key)).MachineAuthorized
                s = await c.map_stream(endpoints=[f"192.0.2.{i + 1}:41641"])
                await s.next()
                clients.append(c)
                streams.append(s)
            await asyncio.sleep(0.2)
            for s in streams:  # swallow the joins' deltas
                with contextlib.suppress(TimeoutError):
                    while True:
                        await s.next(wait=0.2)
            before = env.app.batcher.pushed
            for k in range(3):
                assert await clients[0].lite_update([f"198.51.100.{k + 1}:1"]) == 200
                await asyncio.sleep(0.05)
            for s in streams[1:]:
                seen: list[list[str]] = []
                while len(seen) < 3:
                    msg = await s.next(wait=5)
                    seen += [p["Endpoints"] for p in msg.get("PeersChangedPatch", [])
                             if "Endpoints" in p]  # fmt: skip
                assert seen == [[f"198.51.100.{k + 1}:1"] for k in range(3)]
            assert env.app.batcher.pushed - before >= 9
            for c in clients:
                await c.close()

    run(body)
