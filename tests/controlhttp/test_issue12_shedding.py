"""Issue #12 load test follow-up: when the one event loop runs late while unauthenticated
connections are held, new unauthenticated work is shed so registered nodes' map streams keep
the loop. Asserted on the server's own counters (``NoiseGate``), with explicit clocks in the
sans-IO part."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Callable

import pytest

from meshscale.controlhttp import ClientError, H2Client, NoiseLimits, NoiseUpgrade, dial
from meshscale.controlhttp.limits import NoiseGate
from meshscale.io.http import HTTPServer, Response, Router
from meshscale.key import MachinePrivate, MachinePublic
from meshscale.tailcfg import CURRENT_CAPABILITY_VERSION

pytestmark = pytest.mark.slow


def test_gate_sheds_unauthenticated_work_while_the_loop_lags() -> None:
    # no allowance for fresh sources (shed_admit_rate): see the test after this one
    g = NoiseGate(NoiseLimits(shed_lag=0.1, shed_hold=5.0, shed_min_unauth=2, shed_admit_rate=0))
    held = [g.admit("192.0.2.1", False, 0.0), g.admit("192.0.2.1", False, 0.0)]
    assert all(not isinstance(t, str) for t in held)
    g.observe_lag(0.09, 100.0)  # under the threshold: nothing
    assert not g.shedding(100.0) and g.overloads == 0
    g.observe_lag(0.5, 100.0)
    assert g.shedding(100.0) and g.overloads == 1 and g.max_lag_ms == 500
    g.observe_lag(0.3, 101.0)  # the same episode, extended
    assert g.overloads == 1
    # A source holding unauthenticated connections is refused before its handshake ...
    assert g.precheck("192.0.2.1", 101.0) == "server busy"
    # ... one that opened one a moment ago too; an unknown source gets to the handshake,
    assert g.precheck("192.0.2.9", 101.0) is None
    # ... where a key that is not a registered node's is refused, and a node's admitted.
    assert g.admit("192.0.2.9", False, 101.0) == "server busy"
    node = g.admit("192.0.2.9", True, 101.0)
    assert not isinstance(node, str) and node.node
    assert g.shed == 2
    assert g.stats()["shed"] == 2 and g.stats()["unauth_connections"] == 2
    # The source whose fresh key was just shed is now refused before the handshake.
    assert g.precheck("192.0.2.9", 101.5) == "server busy" and g.shed == 3
    # The cheapest refusal: the held source's TCP connections are reset unread.
    assert g.accept("192.0.2.1", 101.0) == g.limits.shed_tarpit
    assert g.accept("192.0.2.77", 101.0) is None
    assert g.shed_at_accept == 1 and g.shed == 4
    # shed_hold after the last late probe, unauthenticated work is admitted again.
    assert not g.shedding(106.0)
    assert g.precheck("192.0.2.1", 106.0) is None
    assert not isinstance(g.admit("192.0.2.9", False, 106.0), str)
    assert g.accept("192.0.2.1", 106.0) is None
    assert g.shed == 4


def test_a_burst_of_fresh_sources_is_paced_not_refused_while_shedding() -> None:
    """bench_control at N=300 (a pre-auth join per address, 32 at once): the joins' own
    load started an episode and every join was refused once. While shedding, a source that
    is not suspect still gets in at shed_admit_rate (paced up to max_pace); a suspect one
    does not, and a refusal by another cap keeps no allowance token."""
    g = NoiseGate(NoiseLimits(shed_min_unauth=2, shed_admit_rate=10.0, max_pace=2.0))
    for _ in range(2):
        assert not isinstance(g.admit("192.0.2.1", False, 0.0), str)
    g.observe_lag(0.5, 100.0)
    assert g.shedding(100.0)
    got = [g.admit(f"198.51.100.{i}", False, 100.0) for i in range(1, 41)]
    tickets = [t for t in got if not isinstance(t, str)]
    # a burst of 2.5 tokens: 2 at once, then one per 0.1 s up to 2 s away (20), then 503
    assert len(tickets) == 22 and [t.pace for t in tickets[:3]] == [0.0, 0.0, 0.05]
    assert max(t.pace for t in tickets) <= 2.0 and g.paced == 20
    assert got[22:] == ["server busy"] * 18
    assert g.shed_admitted == 22 and g.shed == 18 and g.stats()["shed_admitted"] == 22
    # the flooding source and the refused ones are suspect: no allowance for them
    assert g.admit("192.0.2.1", False, 103.0) == "server busy"
    assert g.admit("198.51.100.40", False, 103.0) == "server busy"
    # a second later the allowance has refilled for a source never seen
    assert not isinstance(g.admit("203.0.113.1", False, 103.0), str)
    assert g.shed_admitted == 23 and g.shed == 20
    # registered nodes never take from it
    node = g.admit("198.51.100.40", True, 103.0)
    assert not isinstance(node, str) and node.pace == 0.0


def test_a_flooding_source_does_not_take_the_allowance_when_its_suspicion_lapses() -> None:
    """bench_hardening with the allowance keyed on suspicion: a junk source, refused at
    accept (which leaves no mark) for shed_hold s after its last registration, was no
    longer suspect, got the allowance, registered again: 3,438 junk keys admitted in one
    run. The allowance is for sources not seen within shed_hold_max s."""
    g = NoiseGate(NoiseLimits(shed_min_unauth=1, shed_hold=5.0, shed_hold_max=60.0))
    load = g.admit("192.0.2.1", False, 0.0)
    junk = g.admit("198.51.100.7", False, 0.0)
    assert not isinstance(load, str) and not isinstance(junk, str)
    g.release(junk, 1.0)  # ended unregistered: marked
    for now in (1.0, 3.0, 5.0, 7.0):
        g.observe_lag(0.5, now)
        assert g.shedding(now)
    assert g.accept("198.51.100.7", 3.0) is not None  # suspect: refused at accept
    # past shed_hold it is not suspect: it reaches the handshake, but no allowance
    assert g.accept("198.51.100.7", 7.0) is None and g.precheck("198.51.100.7", 7.0) is None
    assert g.admit("198.51.100.7", False, 7.0) == "server busy"
    assert g.shed_admitted == 0
    assert not isinstance(g.admit("203.0.113.9", False, 7.0), str)  # a new source does
    assert g.shed_admitted == 1
    g.observe_lag(0.5, 70.0)
    assert not isinstance(g.admit("198.51.100.7", False, 70.0), str)  # long quiet: new again
    assert g.shed_admitted == 2


def test_a_fresh_source_refused_by_a_cap_keeps_no_allowance_token() -> None:
    g = NoiseGate(NoiseLimits(shed_min_unauth=1, max_unauth_connections=3, shed_admit_rate=10.0))
    held = [g.admit("192.0.2.1", False, 0.0) for _ in range(3)]
    g.observe_lag(0.5, 1.0)
    assert g.admit("198.51.100.1", False, 1.0) == "too many unauthenticated connections"
    assert g.shed_admitted == 0 and g.shed == 0 and g.refused == 1
    paces = []
    for i, t in enumerate(held[:2]):
        assert not isinstance(t, str)
        g.release(t, 1.0)
        ticket = g.admit(f"198.51.100.{2 + i}", False, 1.0)
        assert not isinstance(ticket, str)
        paces.append(ticket.pace)
    assert paces == [0.0, 0.0]  # 2 of the 2.5 burst tokens: the refused one took none
    assert g.shed_admitted == 2
    assert g.admit("198.51.100.1", False, 1.0) == "server busy"  # refused: now suspect


def test_gate_does_not_shed_without_unauthenticated_load() -> None:
    """A loop that is slow for other reasons (busy machine, node logins) sheds nothing; an
    episode, once started, lasts while the lag does."""
    g = NoiseGate(NoiseLimits(shed_min_unauth=2))
    t1 = g.admit("192.0.2.1", False, 0.0)
    g.observe_lag(2.0, 10.0)
    assert not g.shedding(10.0) and g.overloads == 0 and g.max_lag_ms == 2000
    t2 = g.admit("192.0.2.2", False, 10.0)
    assert not isinstance(t1, str) and not isinstance(t2, str)
    g.observe_lag(2.0, 11.0)  # now there is unauthenticated load: an episode starts
    assert g.shedding(11.0) and g.overloads == 1
    g.release(t1)
    g.release(t2)
    assert g.unauth_connections == 0
    g.observe_lag(2.0, 15.0)
    assert g.shedding(19.0) and g.overloads == 1


def _block(seconds: float) -> None:
    time.sleep(seconds)


async def _dispatch(req: object) -> Response:
    return Response.text(200, "ok")


async def _dial(
    port: int, key: MachinePrivate, mk: MachinePrivate | None = None, src: str = "127.0.0.1"
) -> H2Client:
    return await dial(
        "127.0.0.1",
        port,
        tls=False,
        machine_key=mk or MachinePrivate(random.randbytes(32)),
        control_key=key.public(),
        version=CURRENT_CAPABILITY_VERSION,
        local_addr=src,
    )


@contextlib.asynccontextmanager
async def _overloaded(
    key: MachinePrivate, limits: NoiseLimits, is_node: Callable[[MachinePublic], bool]
) -> AsyncIterator[tuple[NoiseUpgrade, HTTPServer, int, list[H2Client]]]:
    """A /ts2021 server holding one unauthenticated connection (from 127.0.0.1) whose loop
    was just blocked long enough to start shedding; closed with its clients on exit."""
    up = NoiseUpgrade(key, _dispatch, limits=limits, is_node=is_node)
    router = Router()
    router.add_upgrade("/ts2021", up)
    server = HTTPServer(router, accept_filter=up.accept)
    port = (await server.start("127.0.0.1", 0)).sockets[0].getsockname()[1]
    up.start()
    clients: list[H2Client] = []
    try:
        clients.append(await _dial(port, key))  # the unauthenticated load
        assert up.gate.overloads == 0
        _block(0.4)  # attacker work that blocks the loop
        for _ in range(500):
            if up.gate.overloads:
                break
            await asyncio.sleep(0.01)
        assert up.gate.overloads == 1
        yield up, server, port, clients
    finally:
        for c in clients:
            await c.close()
        await up.close()
        await server.close(grace=0.5)


def test_blocked_loop_sheds_new_unauthenticated_connections_but_admits_nodes() -> None:
    async def go() -> None:
        mk = MachinePrivate(random.randbytes(32))
        known: set[MachinePublic] = {mk.public()}
        key = MachinePrivate(random.Random(3).randbytes(32))
        limits = NoiseLimits(
            shed_lag=0.1, shed_hold=60.0, shed_min_unauth=1, shed_tarpit=0.3, shed_admit_rate=0
        )
        async with _overloaded(key, limits, lambda m: m in known) as (up, server, port, clients):
            assert up.gate.stats()["max_lag_ms"] > 100
            # The loaded source's new connections are held unread, then reset.
            r, w = await asyncio.open_connection("127.0.0.1", port, local_addr=("127.0.0.1", 0))
            w.write(b"GET /ts2021 HTTP/1.1\r\nHost: x\r\n\r\n")
            for _ in range(500):
                if server.held:
                    break
                await asyncio.sleep(0.01)
            assert server.held == 1 and server.refused_at_accept == 1
            with contextlib.suppress(ConnectionError):
                assert await asyncio.wait_for(r.read(), 5) == b""
            w.close()
            assert server.held == 0 and up.gate.shed_at_accept == 1
            with pytest.raises(ClientError, match="503"):
                await _dial(port, key, src="127.0.0.2")  # a fresh key: after it
            assert up.gate.shed == 2 and up.gate.shed_at_accept == 1
            node = await _dial(port, key, mk, "127.0.0.3")  # a registered node gets in
            clients.append(node)
            assert (await node.request("POST", "/x"))[0] == 200
            assert (await clients[0].request("POST", "/x"))[0] == 200  # held ones are served
            assert up.gate.shed == 2 and up.gate.connections == 2

    asyncio.run(asyncio.wait_for(go(), 30))


def test_a_flood_that_returns_meets_longer_holds() -> None:
    g = NoiseGate(NoiseLimits(shed_hold=5.0, shed_hold_max=20.0, shed_min_unauth=1))
    assert not isinstance(g.admit("192.0.2.1", False, 0.0), str)
    ends = []
    now = 10.0
    for _ in range(5):  # lag again the moment each episode ends
        g.observe_lag(1.0, now)
        assert g.shedding(now)
        while g.shedding(now):
            now += 0.5
        ends.append(now)
    holds = [b - a for a, b in zip([10.0, *ends], ends, strict=False)]
    assert [round(h) for h in holds] == [5, 10, 20, 20, 20]
    assert g.overloads == 5 and g.stats()["shed_hold_ms"] == 20000
    g.observe_lag(1.0, now + 21.0)  # a later episode starts from shed_hold again
    assert g.stats()["shed_hold_ms"] == 5000 and g.overloads == 6


def test_nodes_that_joined_leave_their_address_unsuspected() -> None:
    """The bench's /health probe came from the address the 200 nodes had just joined from:
    each join's connection was unauthenticated until it registered, and marked the address
    suspect for shed_hold s, so while shedding the probe was held unread at accept. A
    connection that registers leaves no mark; one that ends unregistered does."""
    g = NoiseGate(NoiseLimits(shed_hold=5.0, shed_min_unauth=1))
    joins = [g.admit("192.0.2.1", False, 0.0) for _ in range(3)]
    for t in joins:
        assert not isinstance(t, str)
        g.promote(t)  # its machine key registered
    junk = g.admit("192.0.2.2", False, 0.0)
    assert not isinstance(junk, str)
    g.observe_lag(1.0, 1.0)
    assert g.shedding(1.0)
    assert g.accept("192.0.2.1", 1.0) is None  # the nodes' address: not suspect
    assert g.accept("192.0.2.2", 1.0) is not None  # holds an unauthenticated connection
    for t in joins:
        g.release(t, 2.0)
    g.release(junk, 2.0)  # ended without registering: suspect for shed_hold s
    assert g.accept("192.0.2.1", 2.5) is None
    assert g.accept("192.0.2.2", 2.5) is not None
    assert g.precheck("192.0.2.2", 2.5) == "server busy"
    assert g.shed_at_accept == 2


def test_a_suspect_source_over_the_server_wide_rate_is_refused_before_parsing() -> None:
    """1,000 fresh keys at once: once a source holds a connection, its further ones are
    refused at accept (unread) while the server-wide bucket would refuse them anyway after
    the handshake; a source that is not suspect still gets to the handshake."""
    g = NoiseGate(NoiseLimits(unauth_rate=10.0, unauth_rate_per_source=1000.0, max_pace=1.0))
    admitted = 0
    for _ in range(40):
        if g.accept("192.0.2.1", 0.0) is not None or g.precheck("192.0.2.1", 0.0):
            continue
        if not isinstance(g.admit("192.0.2.1", False, 0.0), str):
            admitted += 1
    # a burst of 2.5 tokens (10/s * 0.25 s): 2 at once, 10 paced (up to max_pace), then
    # refused early
    assert admitted == 12 and g.paced == 10
    assert g.refused_early == 40 - 12 and g.refused == g.refused_early
    assert g.stats()["refused_early"] == 28
    assert g.accept("192.0.2.9", 0.0) is None and g.precheck("192.0.2.9", 0.0) is None
    # A second later the bucket has room again: the source gets to the handshake.
    assert g.accept("192.0.2.1", 2.0) is None and g.precheck("192.0.2.1", 2.0) is None


def test_while_shedding_a_fresh_source_gets_in_and_the_loaded_one_does_not() -> None:
    async def go() -> None:
        key = MachinePrivate(random.Random(4).randbytes(32))
        limits = NoiseLimits(shed_lag=0.1, shed_hold=60.0, shed_min_unauth=1, shed_tarpit=0.3)
        async with _overloaded(key, limits, lambda m: False) as (up, _server, port, clients):
            assert up.gate.shedding(asyncio.get_running_loop().time())
            with pytest.raises(ConnectionError):  # held unread at accept, then reset
                await _dial(port, key, src="127.0.0.1")
            assert up.gate.shed_at_accept == 1
            fresh = await _dial(port, key, src="127.0.0.4")  # a new node's first connection
            clients.append(fresh)
            assert (await fresh.request("POST", "/machine/register"))[0] == 200
            assert up.gate.shed_admitted == 1 and up.gate.shed >= 1
            assert up.gate.unauth_connections == 2

    asyncio.run(asyncio.wait_for(go(), 30))
