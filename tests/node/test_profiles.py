"""Login profiles (``meshscale login`` / ``switch`` / ``logout``) on the real backend.

Two real control servers (two tailnets, two users) on loopback; meshscaled's Backend (fake
engine and router: no TUN) behind its real local API on a unix socket; the real CLI typed as
a user would. Then the state file is read back as a restarted daemon would.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as hst
from tests.node.test_backend import FakeEngine, FakeRouter

from meshscale.cli.main import main as cli_main
from meshscale.control.app import AppSettings, build_app
from meshscale.control.state import State as ControlState
from meshscale.io.http import HTTPServer
from meshscale.key import MachinePrivate
from meshscale.node import profiles
from meshscale.node.backend import Backend
from meshscale.node.localapi import LocalAPI
from meshscale.node.store import LoginInfo, State, StateError, StateStore
from meshscale.tailcfg import DERPMap
from meshscale.wgengine.magicbind import MagicBind

pytestmark = pytest.mark.slow


@asynccontextmanager
async def tailnet(domain: str, user: str, seed: int) -> AsyncIterator[tuple[str, str, Any]]:
    """A control server for tailnet ``domain`` with one user: (URL, pre-auth key, state)."""
    rng = random.Random(seed)
    state = ControlState.open(":memory:", rand=rng.randbytes, randbelow=rng.randrange)
    u = state.create_user(user, email=f"{user}@{domain}")
    key = state.create_preauth_key(u.id, reusable=True).secret
    # MapResponse.Domain (the tailnet name) is the server URL's host, as Headscale sends
    settings_ = AppSettings(server_url=f"http://{domain}", base_domain=domain,
                            keepalive_interval=0.3, offline_grace=0.0, batch_delay=0.0)  # fmt: skip
    app = build_app(state, settings_, DERPMap(), control_key=MachinePrivate(rng.randbytes(32)),
                    rand=rng.randbytes)  # type: ignore[arg-type]  # fmt: skip
    server = HTTPServer(app.router)
    srv = await server.start("127.0.0.1", 0)
    await app.start()
    try:
        yield f"http://127.0.0.1:{srv.sockets[0].getsockname()[1]}", key, state
    finally:
        await server.close(grace=0.2)
        await app.close()
        state.close()


def _backend(path: Path, st: State) -> Backend:
    bind = MagicBind(st.node_key, st.disco_key, on_event=lambda ev: None)
    return Backend(StateStore(path), st, engine=FakeEngine(), bind=bind,  # type: ignore[arg-type]
                   router=FakeRouter())  # type: ignore[arg-type]  # fmt: skip


def test_login_switch_logout_across_two_tailnets(tmp_path: Path, capsys: Any) -> None:
    sock = str(tmp_path / "ms.sock")
    state_file = tmp_path / "meshscaled.state"

    async def cli(*argv: str) -> tuple[int, str, str]:
        code = await asyncio.to_thread(cli_main, ["--socket", sock, *argv])
        out, err = capsys.readouterr()
        return code, out, err

    async def status() -> dict[str, Any]:
        code, out, err = await cli("status", "--json")
        assert code == 0, err
        return dict(json.loads(out))

    async def body() -> None:
        async with (tailnet("a.example", "alice", 1) as (url_a, key_a, ctl_a),
                    tailnet("b.example", "bob", 2) as (url_b, key_b, ctl_b)):  # fmt: skip
            be = _backend(state_file, StateStore(state_file).load_or_create(os.urandom))
            api = LocalAPI(be)
            await api.start(Path(sock))
            try:
                code, _, err = await cli("up", f"--login-server={url_a}", f"--authkey={key_a}",
                                         "--hostname=laptop", "--timeout=15s")  # fmt: skip
                assert code == 0, err
                key_on_a = (await status())["Self"]["PublicKey"]
                code, out, _ = await cli("switch", "--list")
                lines = out.splitlines()
                assert lines[0].split() == ["ID", "Tailnet", "Account"] and len(lines) == 2
                id_a, net, account = lines[1].split()
                assert (net, account) == ("a.example", "alice@a.example*")

                # login adds a profile on the other tailnet; the first one stays saved
                code, _, err = await cli("login", f"--login-server={url_b}",
                                         f"--authkey={key_b}", "--timeout=15s")  # fmt: skip
                assert code == 0, err
                st = await status()
                assert st["Self"]["DNSName"].endswith(".b.example.")
                assert st["Self"]["PublicKey"] != key_on_a  # node keys are per profile
                code, out, _ = await cli("switch", "-list")
                rows = [r.split() for r in out.splitlines()[1:]]
                id_b = next(r[0] for r in rows if r[1] == "b.example")
                assert rows == [[id_a, "a.example", "alice@a.example"],
                                [id_b, "b.example", "bob@b.example*"]]  # fmt: skip

                # back by tailnet name: the same node on tailnet A, not a new registration
                code, out, err = await cli("switch", "a.example")
                assert code == 0, err
                assert out == "Switching to account 'a.example'\nSuccess.\n"
                st = await status()
                assert st["BackendState"] == "Running"
                assert st["Self"]["PublicKey"] == key_on_a
                assert st["Self"]["HostName"] == "laptop"  # that profile's prefs came back
                assert len(ctl_a.list_nodes()) == 1 and len(ctl_b.list_nodes()) == 1
                code, out, _ = await cli("switch", "alice@a.example")
                assert (code, out) == (0, "Already on account 'alice@a.example'\n")
                code, out, _ = await cli("switch", id_b)  # by ID
                assert code == 0 and out.endswith("Success.\n")
                assert (await status())["Self"]["DNSName"].endswith(".b.example.")

                # persisted in the state dir: a restarted daemon has both profiles
                saved = StateStore(state_file).load()
                assert saved is not None and saved.current_profile == id_b
                assert set(saved.profiles) == {id_a}
                again = _backend(tmp_path / "copy.state", saved)
                assert [p["ID"] for p in again.profiles()[1]] == [id_a, id_b]

                # wrong invocations: one line, exit 2 (usage) or 1 (no such profile)
                code, _, err = await cli("switch")
                assert code == 2 and "usage: meshscale switch" in err and err.count("\n") == 1
                code, _, err = await cli("switch", "nobody@nowhere")
                assert code == 1 and "no profile named 'nobody@nowhere'" in err
                code, _, err = await cli("switch", "--list", id_a)
                assert code == 2 and err.count("\n") == 1

                # logout removes the current profile only
                code, _, err = await cli("logout")
                assert code == 0, err
                assert (await status())["BackendState"] == "NeedsLogin"
                code, out, _ = await cli("switch", "--list")
                assert [r.split() for r in out.splitlines()[1:]] == [
                    [id_a, "a.example", "alice@a.example"]]  # fmt: skip
                code, out, _ = await cli("switch", "alice@a.example")
                assert code == 0 and out.endswith("Success.\n"), out
                assert (await status())["Self"]["PublicKey"] == key_on_a
            finally:
                await api.close()
                await be.close()

    async def bounded() -> None:
        async with asyncio.timeout(90):
            await body()

    asyncio.run(bounded())


def test_local_api_profile_routes(tmp_path: Path) -> None:
    """The routes' errors, through the real socket (no control server needed)."""
    from meshscale.io import httpclient

    sock = tmp_path / "ms.sock"

    async def body() -> None:
        be = _backend(tmp_path / "state", State.new(os.urandom))
        api = LocalAPI(be)
        await api.start(sock)

        async def req(method: str, path: str) -> tuple[int, Any]:
            r = await asyncio.to_thread(
                httpclient.request_sync, method, "http://x/localapi/v0/" + path,
                unix_socket=str(sock), headers=[], body=b"", max_body=1 << 16, time_limit=5,
            )  # fmt: skip
            return r.status, json.loads(r.body)

        try:
            assert await req("GET", "profiles/") == (200, [])
            status, cur = await req("GET", "profiles/current")
            assert status == 200 and cur["ID"] == "" and cur["Key"] == ""
            assert (await req("POST", "profiles/beef"))[0] == 404
            status, err = await req("POST", "profiles/../../etc")
            assert status == 400 and "invalid profile ID" in err["error"]
            assert (await req("DELETE", "profiles/"))[0] == 405
            assert (await req("GET", "profiles/x/y"))[0] == 404
            # PUT on an empty profile keeps it (a first login must not lose its prefs)
            key = be.st.node_key.text()
            assert (await req("PUT", "profiles/"))[0] == 200
            assert be.st.node_key.text() == key
        finally:
            await api.close()
            await be.close()

    asyncio.run(body())


def test_profiles_core_switch_and_relogin_keeps_id() -> None:
    rng = random.Random(5)
    st = State.new(rng.randbytes)
    st.prefs.ControlURL = "http://a"
    st.login = LoginInfo("alice@a", "Alice", 7)
    profiles.on_login(st, rng.randbytes)
    first = st.current_profile
    assert len(first) == 4 and profiles.listing(st)[0]["Name"] == "alice@a"
    assert profiles.to_empty(st, rng.randbytes) and st.current_profile == ""
    assert not profiles.to_empty(st, rng.randbytes)  # already empty: unchanged
    # the same user on the same server logs in again from the empty profile: same ID, one entry
    st.prefs.ControlURL = "http://a"
    st.login = LoginInfo("alice@a", "Alice", 7)
    profiles.on_login(st, rng.randbytes)
    assert st.current_profile == first and [p["ID"] for p in profiles.listing(st)] == [first]
    with pytest.raises(profiles.ProfileError):
        profiles.switch(st, "ffff")


_json = hst.recursive(
    hst.none() | hst.booleans() | hst.integers() | hst.text(max_size=8),
    lambda inner: hst.lists(inner, max_size=3) | hst.dictionaries(hst.text(max_size=6), inner,
                                                                   max_size=3),
    max_leaves=10,
)  # fmt: skip


@settings(max_examples=200, deadline=None)
@given(profiles_=_json, current=_json)
def test_state_file_profiles_parse_or_refuse(profiles_: Any, current: Any) -> None:
    """Whatever sits under Profiles/CurrentProfile: a State or a StateError, nothing else."""
    base = State.new(random.Random(1).randbytes).to_json()
    base["Profiles"], base["CurrentProfile"] = profiles_, current
    try:
        st = State.from_json(base)
    except StateError:
        return
    assert st.current_profile == "" or st.current_profile not in st.profiles
    assert State.from_json(st.to_json()).to_json() == st.to_json()
