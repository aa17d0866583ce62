"""Roaming: a NAT forgets its mappings, or a node moves to another network
(docs/protocol/derp-disco-stun.md §5.7)."""

from __future__ import annotations

import pytest

from meshscale.testing import NATType, SimControl, SimNet, SimNode, add_node


def setup_direct(kind_a: str, kind_b: str, seed: int = 1) -> tuple[SimNet, SimNode, SimNode]:
    net = SimNet(seed=seed)
    relay = net.add_relay(900, "192.0.2.1", latency=0.010)
    control = SimControl()
    a = add_node(net, kind_a, 1, [relay], control)
    b = add_node(net, kind_b, 2, [relay], control)
    a.start()
    b.start()
    control.publish(a)
    a.start_flow(b.node_key)
    b.start_flow(a.node_key)
    assert net.run_until(lambda: a.direct_to(b.node_key) and b.direct_to(a.node_key), 15.0)
    return net, a, b


@pytest.mark.parametrize("kind_a", ["public", "easy"])
def test_nat_mapping_change_recovers(kind_a: str) -> None:
    net, a, b = setup_direct(kind_a, "easy")
    old = a.conn.peer_status(b.node_key, net.clock.now())
    assert old is not None
    assert old.best is not None
    nat = b.host.nat
    assert nat is not None
    nat.reset()  # b's public mapping changes; b itself is not told
    t0 = net.clock.now()

    def recovered() -> bool:
        st = a.conn.peer_status(b.node_key, net.clock.now())
        return (
            st is not None
            and st.trusted
            and st.best is not None
            and st.best != old.best
            and b.direct_to(a.node_key)
        )

    assert net.run_until(recovered, 60.0, max_steps=100_000)
    # Stale trust lasts at most 6.5 s; discovery, a re-STUN and a CallMeMaybe follow.
    assert net.clock.now() - t0 < 35.0
    t1 = net.clock.now()
    net.run(10.0)
    assert all(r.via_udp for r in a.received_from(b.node_key, since=t1 + 1.0))
    # Data kept flowing through the change: at most the stale-trust window was lost.
    lost = a.expected_from(b) - a.payloads_from(b)
    assert len(lost) <= 14  # 6.5 s of 0.5 s packets, plus rounding


def test_host_moves_to_new_network() -> None:
    net, a, b = setup_direct("easy", "easy")
    nat = net.add_nat("cafe", "198.18.9.1", NATType.EASY)
    t0 = net.clock.now()
    a.roam(net.add_host("cafe-laptop", "10.9.0.7", nat=nat))
    # The link change drops every path at once: traffic falls back to DERP meanwhile.
    assert not a.direct_to(b.node_key)

    def recovered() -> bool:
        st = b.conn.peer_status(a.node_key, net.clock.now())
        return (
            a.direct_to(b.node_key)
            and st is not None
            and st.trusted
            and st.best is not None
            and str(st.best.ip) == "198.18.9.1"
        )

    assert net.run_until(recovered, 60.0, max_steps=100_000)
    assert net.clock.now() - t0 < 30.0
    t1 = net.clock.now()
    net.run(10.0)
    assert all(r.via_udp for r in b.received_from(a.node_key, since=t1 + 1.0))


def test_peer_restart_with_new_disco_key_starts_over() -> None:
    net, a, b = setup_direct("public", "easy")
    control = a.control
    assert control is not None
    from meshscale.key import DiscoPrivate
    from meshscale.magicsock import Conn

    # b restarts: new disco key, fresh Conn on the same socket.
    b.disco_private = DiscoPrivate(bytes(range(1, 33)))
    b.conn = Conn(b.node_key, b.disco_private, rand=b.rand, local_port=b.sock.port)
    b.start()
    control.publish(b)
    # a's old pongs/box for b are gone; the path is rebuilt with the new key.
    assert net.run_until(lambda: a.direct_to(b.node_key) and b.direct_to(a.node_key), 20.0)
    assert a.conn.statistics().counters.get("drop_disco_unknown_sender", 0) == 0


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5, 6])
def test_peer_moving_behind_its_nat_is_reached_again_within_a_second(seed: int) -> None:
    """The lab's roaming case: b (easy NAT) gets a new LAN address, so its NAT gives it a
    new mapping. a keeps sending (every 0.5 s); b only answered, so it goes quiet.
    b's network change starts discovery at once; its CallMeMaybe (new endpoint listed) ends
    a's trust in the dead mapping, so a's traffic reaches b (over DERP, then direct) within
    a second, not when the trust from the last heartbeat pong runs out (up to 6.5 s)."""
    net, a, b = setup_direct("public", "easy", seed=seed)
    b.stop_flows()
    net.run(10.0 + seed * 0.45)  # roam at a different point of the 3 s heartbeat cycle
    old = a.conn.peer_status(b.node_key, net.clock.now())
    assert old is not None and old.best is not None
    t0 = net.clock.now()
    nat = b.host.nat
    assert nat is not None
    b.roam(net.add_host("h2-moved", "10.2.0.200", nat=nat))
    assert net.run_until(lambda: bool(b.received_from(a.node_key, since=t0)), 1.0)
    assert net.run_until(lambda: a.direct_to(b.node_key), 2.0)
    st = a.conn.peer_status(b.node_key, net.clock.now())
    assert st is not None and st.best != old.best
