"""Issue #12 finding 8: ``meshscale-derp --verify-clients`` asks the local meshscaled's
``whois`` for a node key. A real LocalAPI over a real Backend (its netmap: self and one peer)
on a unix socket, and a real relay admitting through LocalAPIVerifier over loopback; plus the
bounded fail-open of URLVerifier."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from meshscale.derp.info import ClientInfo
from meshscale.derphttp import DERPClient
from meshscale.io.http import HTTPServer, Router
from meshscale.node.controlclient import NetworkMap
from meshscale.node.localapi import LocalAPI
from meshscale.relay.app import mount_derp
from meshscale.relay.server import DERPServer
from meshscale.relay.verify import LocalAPIVerifier, URLVerifier
from meshscale.tailcfg import MapResponse, UserProfile

from .test_backend import DM, _backend, _key, _node
from .test_localapi import _request

pytestmark = pytest.mark.slow


def test_relay_verify_clients_admits_tailnet_peers_by_node_key(tmp_path: Path) -> None:
    async def go() -> None:
        be, _engine, _router = _backend(tmp_path)
        nm = NetworkMap()
        nm.apply(MapResponse(Node=_node(1), DERPMap=DM, Peers=[_node(2)],
                             UserProfiles=[UserProfile(ID=1, LoginName="lab@x")]))  # fmt: skip
        be._on_netmap(nm)
        sock = tmp_path / "ms.sock"
        api = LocalAPI(be)
        await api.start(sock)
        relay = DERPServer(_key(50), verify_client=LocalAPIVerifier(str(sock)))
        router = Router()
        mount_derp(router, relay)
        http = HTTPServer(router)
        port = (await http.start("127.0.0.1", 0)).sockets[0].getsockname()[1]
        try:
            v = LocalAPIVerifier(str(sock))
            info = ClientInfo()
            assert await v(_key(2).public(), info)  # a peer
            assert await v(_key(1).public(), info)  # the node itself
            assert not await v(_key(9).public(), info)  # a stranger
            status, body = await _request(sock, "GET", "/localapi/v0/whois?addr=nodekey:zz")
            assert status == 400 and "invalid node key" in body["error"]
            peer = DERPClient(_key(2), f"http://127.0.0.1:{port}/derp")
            await peer.connect()  # admitted: before the fix every client was refused
            assert relay.relay.client_count == 1
            await peer.close()
            stranger = DERPClient(_key(9), f"http://127.0.0.1:{port}/derp")
            with pytest.raises(Exception):  # noqa: B017 - refused at login
                await stranger.connect()
            await stranger.close()
        finally:
            await http.close(grace=0.5)
            await relay.close()
            await api.close()

    asyncio.run(asyncio.wait_for(go(), 30))


def test_url_verifier_fails_open_only_for_the_grace_period() -> None:
    now = [0.0]
    v = URLVerifier("http://127.0.0.1:9/verify", fail_open=True, fail_open_grace=60,
                    monotonic=lambda: now[0])  # fmt: skip
    closed = URLVerifier("http://127.0.0.1:9/verify", fail_open=False)

    async def go() -> list[bool]:
        info = ClientInfo()
        first = await v(_key(3).public(), info)
        now[0] = 61.0
        return [first, await v(_key(3).public(), info), await closed(_key(3).public(), info)]

    assert asyncio.run(asyncio.wait_for(go(), 30)) == [True, False, False]
