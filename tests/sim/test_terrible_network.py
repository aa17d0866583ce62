"""Seeded loss, duplication and delay (trio's test_handshake_over_terrible_network idea)."""

from __future__ import annotations

import pytest

from meshscale.testing import SimControl, SimNet, SimNode, SimStepLimit, add_node, lossy


def make(seed: int, kind_a: str, kind_b: str, **hook: float) -> tuple[SimNet, SimNode, SimNode]:
    net = SimNet(seed=seed, hook=lossy(**hook))
    relay = net.add_relay(900, "192.0.2.1", latency=0.010)
    control = SimControl()
    a = add_node(net, kind_a, 1, [relay], control, seed=seed * 10 + 1)
    b = add_node(net, kind_b, 2, [relay], control, seed=seed * 10 + 2)
    a.start()
    b.start()
    control.publish(a)
    net.run(4.0)  # homes known before traffic: a packet with no path at all is dropped
    a.start_flow(b.node_key, 0.25)
    b.start_flow(a.node_key, 0.25)
    return net, a, b


@pytest.mark.parametrize("seed", range(8))
def test_easy_easy_goes_direct_despite_loss_dup_delay(seed: int) -> None:
    net, a, b = make(seed, "easy", "easy", loss=0.3, dup=0.2, max_delay=0.08)
    assert net.run_until(
        lambda: a.direct_to(b.node_key) and b.direct_to(a.node_key), 40.0, max_steps=100_000
    )
    net.run(20.0, max_steps=100_000)
    got, want = b.payloads_from(a), b.expected_from(a)
    assert got <= want  # duplicates never invent data
    # UDP loses ~30 %; DERP (reliable) carries the rest while trust is missing.
    assert len(got) >= 0.5 * len(want)


@pytest.mark.parametrize("seed", range(4))
def test_derp_only_pair_loses_nothing(seed: int) -> None:
    # UDP loss is irrelevant when every datagram travels over the TCP-like relay.
    net, a, b = make(seed, "hard", "hard", loss=0.5, dup=0.3, max_delay=0.1)
    net.run(20.0, max_steps=100_000)
    a.stop_flows()
    b.stop_flows()
    net.run(2.0)
    assert b.payloads_from(a) == b.expected_from(a)
    assert a.payloads_from(b) == a.expected_from(b)


def test_same_seed_same_run() -> None:
    def trace(seed: int) -> tuple[int, int, float]:
        net, a, b = make(seed, "easy", "public", loss=0.2, dup=0.1, max_delay=0.05)
        net.run_until(lambda: a.direct_to(b.node_key), 30.0)
        return net.udp_sent, net.udp_dropped, net.clock.now()

    assert trace(7) == trace(7)
    assert trace(7) != trace(8)


def test_step_cap_is_enforced() -> None:
    net, _, _ = make(1, "easy", "easy")
    with pytest.raises(SimStepLimit):
        net.run(60.0, max_steps=50)
