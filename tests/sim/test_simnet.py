"""SimNet itself: RFC 4787 NAT behaviours, the relay, the hook and the autojump loop."""

from __future__ import annotations

import pytest

from meshscale import stun
from meshscale.disco import AddrPort
from meshscale.key import NodePrivate
from meshscale.testing import FakeClock, NATType, SimNet, SimStepLimit, lossy

AP = AddrPort.parse


def lan_and_servers(kind: NATType, **kw: float):
    net = SimNet(seed=1)
    nat = net.add_nat("nat", "198.18.0.1", kind, **kw)
    inside = net.add_host("in", "10.0.0.2", nat=nat).bind(41641)
    s1 = net.add_host("s1", "203.0.113.1").bind(7000)
    s2 = net.add_host("s2", "203.0.113.2").bind(7000)
    return net, nat, inside, s1, s2


def test_fake_clock_never_goes_backwards() -> None:
    c = FakeClock(5.0)
    assert c.advance(1.5) == 6.5
    assert c() == c.now() == 6.5
    with pytest.raises(ValueError, match="backwards"):
        c.jump_to(6.0)
    with pytest.raises(ValueError, match="backwards"):
        c.advance(-1)


def test_easy_nat_maps_independently_of_destination_and_filters_by_address_port() -> None:
    net, _, inside, s1, s2 = lan_and_servers(NATType.EASY)
    inside.sendto(b"a", s1.local)
    inside.sendto(b"b", s2.local)
    net.run(1.0)
    (_, m1), (_, m2) = s1.received[0], s2.received[0]
    assert m1 == m2  # endpoint-independent mapping
    assert str(m1.ip) == "198.18.0.1"
    # The mapping accepts only remotes it has sent to (address and port dependent).
    s1.sendto(b"reply", m1)
    stranger = net.add_host("s3", "203.0.113.3").bind(7000)
    stranger.sendto(b"spam", m1)
    other_port = s1.host.bind(7001)
    other_port.sendto(b"spam", m1)
    net.run(1.0)
    assert inside.received == [(b"reply", s1.local)]


def test_hard_nat_maps_per_destination() -> None:
    net, _, inside, s1, s2 = lan_and_servers(NATType.HARD)
    inside.sendto(b"a", s1.local)
    inside.sendto(b"b", s2.local)
    inside.sendto(b"c", s1.local)
    net.run(1.0)
    assert s1.received[0][1] == s1.received[1][1]
    assert s1.received[0][1] != s2.received[0][1]
    s2.sendto(b"via the wrong mapping", s1.received[0][1])
    s1.sendto(b"ok", s1.received[0][1])
    net.run(1.0)
    assert inside.received == [(b"ok", s1.local)]


def test_udp_blocked_drops_everything() -> None:
    net, nat, inside, s1, _ = lan_and_servers(NATType.UDP_BLOCKED)
    inside.sendto(b"a", s1.local)
    s1.sendto(b"b", AP("198.18.0.1:1234"))
    net.run(1.0)
    assert s1.received == []
    assert inside.received == []
    assert nat.mappings() == 0


def test_mapping_times_out_and_reset_changes_ports() -> None:
    net, nat, inside, s1, _ = lan_and_servers(NATType.EASY, mapping_timeout=30.0)
    inside.sendto(b"a", s1.local)
    net.run(1.0)
    first = s1.received[-1][1]
    net.run(31.0)
    s1.sendto(b"late", first)  # the mapping has expired
    net.run(1.0)
    assert inside.received == []
    inside.sendto(b"b", s1.local)
    net.run(1.0)
    assert s1.received[-1][1] != first  # a fresh mapping
    nat.reset()
    inside.sendto(b"c", s1.local)
    net.run(1.0)
    assert s1.received[-1][1] not in (first, s1.received[-2][1])


def test_same_lan_skips_the_nat_and_other_lans_are_unreachable() -> None:
    net = SimNet(seed=2)
    nat1 = net.add_nat("n1", "198.18.0.1", NATType.EASY)
    nat2 = net.add_nat("n2", "198.18.0.2", NATType.EASY)
    a = net.add_host("a", "10.0.0.2", nat=nat1).bind(1)
    b = net.add_host("b", "10.0.0.3", nat=nat1).bind(1)
    c = net.add_host("c", "10.0.0.3", nat=nat2).bind(1)  # same private IP, other LAN
    a.sendto(b"hi", b.local)
    net.run(1.0)
    assert b.received == [(b"hi", a.local)]
    assert c.received == []
    assert nat1.mappings() == 0


def test_relay_answers_stun_and_relays_by_key() -> None:
    net = SimNet(seed=3)
    relay = net.add_relay(900, "192.0.2.1", latency=0.01)
    nat = net.add_nat("n", "198.18.0.1", NATType.HARD)
    host = net.add_host("h", "10.0.0.2", nat=nat)
    sock = host.bind(41641)
    sock.sendto(stun.request(b"x" * 12), AP("192.0.2.1:3478"))
    sock.sendto(b"not stun", AP("192.0.2.1:3478"))
    net.run(1.0)
    ((data, src),) = sock.received
    resp = stun.parse_response(data)
    assert resp.txid == b"x" * 12
    assert str(resp.addr) == "198.18.0.1"
    assert src == AP("192.0.2.1:3478")
    assert relay.stun_answered == 1

    k1, k2 = NodePrivate(bytes([1]) * 32).public(), NodePrivate(bytes([2]) * 32).public()
    got: list[tuple[bytes, object, int, float]] = []
    relay.connect(k2, host, lambda d, s, r, t: got.append((d, s, r, t)))
    t0 = net.clock.now()
    for i in range(5):
        relay.send(host, k1, k2, bytes([i]))
    relay.send(host, k2, k1, b"nobody home")  # k1 is not connected: dropped
    net.run(1.0)
    assert [g[0] for g in got] == [bytes([i]) for i in range(5)]  # in order
    assert all(g[1] == k1 and g[2] == 900 for g in got)
    assert got[0][3] - t0 == pytest.approx(2 * (0.005 + 0.01))
    assert relay.relayed == 5


def test_hook_loss_and_duplication_are_seeded() -> None:
    def run(seed: int) -> list[bytes]:
        net = SimNet(seed=seed, hook=lossy(loss=0.3, dup=0.3, max_delay=0.05))
        a = net.add_host("a", "203.0.113.1").bind(1)
        b = net.add_host("b", "203.0.113.2").bind(1)
        for i in range(200):
            a.sendto(bytes([i]), b.local)
        net.run(1.0)
        return [d for d, _ in b.received]

    r1, r2 = run(4), run(4)
    assert r1 == r2
    assert run(5) != r1
    assert 100 < len(set(r1)) < 180  # about 70 % arrive
    assert len(r1) > len(set(r1))  # and some twice
    assert r1 != sorted(r1)  # delay reorders


class TimerAgent:
    def __init__(self, times: list[float]) -> None:
        self.times = times
        self.fired: list[float] = []

    def get_timer(self) -> float | None:
        return self.times[0] if self.times else None

    def handle_timer(self, now: float) -> None:
        self.fired.append(now)
        self.times.pop(0)


def test_autojump_to_timers_and_run_until() -> None:
    net = SimNet()
    agent = TimerAgent([1.0, 2.5, 100.0])
    net.add_agent(agent)
    assert not net.run_until(lambda: len(agent.fired) == 3, 10.0)
    assert agent.fired == [1.0, 2.5]
    assert net.clock.now() == 10.0
    assert net.run_until(lambda: len(agent.fired) == 3, 100.0)
    assert net.clock.now() == 100.0


class StuckAgent:
    def get_timer(self) -> float | None:
        return 0.0

    def handle_timer(self, now: float) -> None:
        pass


def test_livelock_hits_the_step_cap() -> None:
    net = SimNet()
    net.add_agent(StuckAgent())
    with pytest.raises(SimStepLimit):
        net.run(1.0, max_steps=100)


def test_addresses_are_unique() -> None:
    net = SimNet()
    net.add_host("a", "203.0.113.1")
    with pytest.raises(ValueError, match="in use"):
        net.add_relay(1, "203.0.113.1")
    host = net.add_host("b", "203.0.113.2")
    host.bind(5)
    with pytest.raises(OSError, match="in use"):
        host.bind(5)


@pytest.mark.parametrize(
    ("kind", "same_ip_other_port", "stranger"),
    [
        (NATType.EASY, False, False),
        (NATType.RESTRICTED, True, False),
        (NATType.FULL_CONE, True, True),
    ],
)
def test_filtering_kinds(kind: NATType, same_ip_other_port: bool, stranger: bool) -> None:
    net, _, inside, s1, _ = lan_and_servers(kind)
    inside.sendto(b"a", s1.local)
    net.run(1.0)
    mapped = s1.received[0][1]
    s1.host.bind(7001).sendto(b"port", mapped)
    net.add_host("s3", "203.0.113.3").bind(7000).sendto(b"stranger", mapped)
    net.run(1.0)
    got = {d for d, _ in inside.received}
    assert ("port" in {g.decode() for g in got}) is same_ip_other_port
    assert (b"stranger" in got) is stranger
