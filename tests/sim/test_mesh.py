"""A mesh of several nodes behind different NATs (headscale servertest's "until complete")."""

from __future__ import annotations

import itertools
import random

import pytest

from meshscale.testing import SimControl, SimNet, add_node, lossy

KINDS = ["public", "easy", "easy", "hard", "blocked"]


def direct_expected(k1: str, k2: str) -> bool:
    pair = {k1, k2}
    if "blocked" in pair:
        return False
    if "public" in pair:
        return True
    return pair == {"easy"}


def test_five_node_mesh() -> None:
    net = SimNet(seed=11)
    relays = [
        net.add_relay(900, "192.0.2.1", latency=0.030),
        net.add_relay(901, "192.0.2.2", latency=0.002),
    ]
    control = SimControl()
    nodes = [add_node(net, kind, i + 1, relays, control) for i, kind in enumerate(KINDS)]
    for n in nodes:
        n.start()
    control.publish(nodes[0])
    net.run(4.0)
    for a, b in itertools.permutations(nodes, 2):
        a.start_flow(b.node_key, 1.0)
    pairs = list(itertools.combinations(range(len(nodes)), 2))

    def complete() -> bool:
        return all(
            nodes[i].direct_to(nodes[j].node_key) and nodes[j].direct_to(nodes[i].node_key)
            for i, j in pairs
            if direct_expected(KINDS[i], KINDS[j])
        )

    assert net.run_until(complete, 20.0, max_steps=200_000)
    net.run(15.0, max_steps=200_000)
    for i, j in pairs:
        a, b = nodes[i], nodes[j]
        assert a.direct_to(b.node_key) is direct_expected(KINDS[i], KINDS[j]), (a.name, b.name)
    # Everyone picked the nearer region: by STUN latency, or over HTTPS when UDP is
    # blocked (netcheck's fallback, docs/protocol/derp-disco-stun.md §3.5).
    for n in nodes:
        assert n.conn.home_derp == 901, n.name
    for n in nodes:
        n.stop_flows()
    net.run(2.0)
    for a, b in itertools.permutations(nodes, 2):
        assert b.payloads_from(a) == b.expected_from(a), (a.name, b.name)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2])
def test_twelve_nodes_random_nats_lossy(seed: int) -> None:
    rng = random.Random(seed)
    kinds = [rng.choice(["public", "easy", "hard", "blocked", "restricted"]) for _ in range(12)]
    net = SimNet(seed=seed, hook=lossy(loss=0.05, dup=0.02, max_delay=0.02))
    relays = [net.add_relay(900, "192.0.2.1", latency=0.02), net.add_relay(901, "192.0.2.2")]
    control = SimControl()
    nodes = [add_node(net, k, i + 1, relays, control) for i, k in enumerate(kinds)]
    for n in nodes:
        n.start()
    control.publish(nodes[0])
    net.run(5.0, max_steps=500_000)
    for a, b in itertools.permutations(nodes, 2):
        a.start_flow(b.node_key, 2.0)

    def expect(k1: str, k2: str) -> bool:
        pair = {k1, k2}
        if "blocked" in pair:
            return False
        if "public" in pair:
            return True
        return pair != {"hard"} and pair != {"easy", "hard"}

    pairs = [(i, j) for i, j in itertools.combinations(range(12), 2)]
    assert net.run_until(
        lambda: all(
            nodes[i].direct_to(nodes[j].node_key) and nodes[j].direct_to(nodes[i].node_key)
            for i, j in pairs
            if expect(kinds[i], kinds[j])
        ),
        60.0,
        max_steps=2_000_000,
    ), kinds
    for i, j in pairs:
        if not expect(kinds[i], kinds[j]):
            assert not nodes[i].direct_to(nodes[j].node_key), (kinds[i], kinds[j])
    for n in nodes:
        n.stop_flows()
    net.run(3.0, max_steps=500_000)
    sent = sum(len(b.expected_from(a)) for a, b in itertools.permutations(nodes, 2))
    got = sum(len(b.payloads_from(a)) for a, b in itertools.permutations(nodes, 2))
    assert got >= 0.9 * sent
