"""Issue #12 findings 3 and 6: a pending-registration flood from fresh machine keys over real
ts2021 connections on loopback. The flooding address gets its burst of AuthURLs, then cheap
429s (before the body is parsed); a real user from another address still gets an AuthURL,
and a full table evicts its oldest entries instead of locking everyone out."""

from __future__ import annotations

import asyncio
import json
import random
import socket

import pytest

from meshscale.control.app import AppSettings, build_app
from meshscale.control.auth.register import INTERACTIVE_BURST
from meshscale.control.state import State
from meshscale.io.http import HTTPServer
from meshscale.key import MachinePrivate
from meshscale.tailcfg import DERPMap, DERPNode, DERPRegion
from meshscale.testing.controlclient import ControlClient

pytestmark = pytest.mark.slow

DERP = DERPMap(
    Regions={900: DERPRegion(900, "lab", "Lab", Nodes=[DERPNode("900a", 900, "derp.lab")])}
)


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="needs ::1")
def test_registration_flood_is_bounded_per_source() -> None:
    async def go() -> None:
        rng = random.Random(3)
        state = State.open(":memory:", rand=rng.randbytes, randbelow=rng.randrange)
        app = build_app(
            state, AppSettings(server_url="http://ctl.test"), DERP,
            control_key=MachinePrivate(rng.randbytes(32)), rand=rng.randbytes,
        )  # fmt: skip
        server, server6 = HTTPServer(app.router), HTTPServer(app.router)
        ports = {  # the same app on two listeners: 127.0.0.1 and ::1 are two sources
            "127.0.0.1": (await server.start("127.0.0.1", 0)).sockets[0].getsockname()[1],
            "::1": (await server6.start("::1", 0)).sockets[0].getsockname()[1],
        }
        await app.start()
        app.register.monotonic = lambda: 0.0  # no refill during the flood: exact counts
        ctl = app.control_key.public()

        async def register(host: str) -> tuple[int, str]:
            c = ControlClient(host, ports[host], control_key=ctl, rand=rng.randbytes)
            await c.connect()
            try:
                body = json.dumps(
                    {"Version": c.version, "NodeKey": c.node_key.public().text(),
                     "Hostinfo": {"Hostname": "flood"}}
                ).encode()  # fmt: skip
                status, raw = await c.request("POST", "/machine/register", body)
                return status, json.loads(raw).get("AuthURL", "") if status == 200 else ""
            finally:
                await c.close()

        try:
            got = [await register("127.0.0.1") for _ in range(INTERACTIVE_BURST + 20)]
            urls = [u for s, u in got if s == 200 and u]
            assert len(urls) == INTERACTIVE_BURST
            assert [s for s, _ in got].count(429) == 20
            assert app.register.buckets.rejected == 20  # refused before JSON parsing
            assert len(state.list_registrations()) <= INTERACTIVE_BURST
            status, url = await register("::1")  # a real user elsewhere is unaffected
            assert status == 200 and url.startswith("http://ctl.test/register/")
            for _ in range(200):  # the server notices the last close
                if app.noise.gate.stats()["connections"] == 0:
                    break
                await asyncio.sleep(0.01)
            assert app.noise.gate.stats()["connections"] == 0
        finally:
            await server.close(grace=0.5)
            await server6.close(grace=0.5)
            await app.close()
            state.close()

    asyncio.run(asyncio.wait_for(go(), 60))
