"""io.accept (issue #12, /health under a connection flood): admitted connections are started
round-robin across sources, at most ACCEPT_BATCH per event-loop pass, and refused ones never
get a transport. Asserted on the acceptor's order and counters, not on timing."""

from __future__ import annotations

import asyncio
import socket

from meshscale.io.accept import ACCEPT_BATCH, Acceptor, bind, source_key


def test_source_key_groups_ipv6_by_64_and_unmaps_ipv4() -> None:
    assert source_key("192.0.2.7") == "192.0.2.7"
    assert source_key("2001:db8::1") == source_key("2001:db8::ffff:1")
    assert source_key("2001:db8::1") != source_key("2001:db8:0:1::1")
    assert source_key("::ffff:192.0.2.7") == "192.0.2.7"
    assert source_key(None) == "?"


def test_a_lone_source_is_started_in_the_first_pass_behind_a_burst() -> None:
    """200 connections from one address arrive first, then one from another (a /health
    probe behind a flood): it is among the first ACCEPT_BATCH started, not the 201st."""

    async def main() -> tuple[list[list[str]], int]:
        started: list[tuple[str, socket.socket]] = []
        acc = Acceptor(lambda s, _l: started.append((s.getpeername()[0], s)))
        (listener,) = await bind("127.0.0.1", 0, 1024)
        port = listener.getsockname()[1]
        clients = []
        try:
            for _ in range(200):  # the loop is not running: only the kernel accepts these
                c = socket.socket()
                c.bind(("127.0.0.2", 0))
                c.connect(("127.0.0.1", port))
                clients.append(c)
            lone = socket.create_connection(("127.0.0.1", port), source_address=("127.0.0.1", 0))
            clients.append(lone)
            acc.listen(listener)
            passes: list[list[str]] = []
            for _ in range(100):
                n = len(started)
                await asyncio.sleep(0)  # one pass of the event loop
                passes.append([h for h, _ in started[n:]])
                if len(started) == 201:
                    break
            return passes, acc.waiting
        finally:
            acc.close()
            for _, s in started:
                s.close()
            for c in clients:
                c.close()

    passes, waiting = asyncio.run(main())
    assert sum(len(p) for p in passes) == 201 and waiting == 0
    assert max(len(p) for p in passes) <= ACCEPT_BATCH
    first = next(p for p in passes if p)
    assert "127.0.0.1" in first  # round-robin: its turn comes at once


def test_refused_connections_get_no_start_and_are_reset_when_their_hold_ends() -> None:
    async def main() -> tuple[int, int, int, bytes]:
        started: list[socket.socket] = []
        acc = Acceptor(started.append, accept_filter=lambda host: 0.05)
        (listener,) = await bind("127.0.0.1", 0, 64)
        acc.listen(listener)
        r, w = await asyncio.open_connection(*listener.getsockname())
        for _ in range(200):
            if acc.refused:
                break
            await asyncio.sleep(0.01)
        held = acc.held
        try:
            got = await asyncio.wait_for(r.read(), 5)
        except ConnectionError:
            got = b""
        w.close()
        out = (acc.refused, held, acc.held, got)
        acc.close()
        return out

    refused, held, held_after, got = asyncio.run(main())
    assert (refused, held, held_after, got) == (1, 1, 0, b"")
