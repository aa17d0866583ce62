"""Hard-NAT (birthday-paradox) probe planner (magicsock.hardnat): budget, deadline, roles."""

from __future__ import annotations

import os
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshscale.disco import AddrPort
from meshscale.key import NodePublic
from meshscale.magicsock.hardnat import (
    LATE_PONG,
    PORT_MAX,
    PORT_MIN,
    START_DELAY,
    ProbeBudget,
    ProbePlanner,
    Role,
    choose_role,
    is_public_v4,
)

AP = AddrPort.parse
PEER = NodePublic(bytes([7]) * 32)
OTHER = NodePublic(bytes([8]) * 32)
HARD_EPS = (AP("203.0.113.13:54541"), AP("203.0.113.13:60001"), AP("10.2.0.2:41641"))
EASY_EPS = (AP("203.0.113.12:41641"), AP("10.1.0.2:41641"))


def seeded(seed: int = 1):  # type: ignore[no-untyped-def]
    r = random.Random(seed)
    return lambda n: r.randbytes(n)


def run(p: ProbePlanner, start: float, until: float, step: float = 0.01) -> list[tuple[float, int]]:
    """Drive the timer as a driver would; (time, probes sent then) per burst."""
    out = []
    t = start
    while t <= until:
        nt = p.get_timer()
        if nt is not None and nt <= t:
            p.handle_timer(t)
            got = p.take_probes()
            if got:
                out.append((t, len(got)))
        t += step
    return out


def test_roles_only_for_easy_and_hard() -> None:
    assert choose_role(True, False) is Role.OPEN
    assert choose_role(False, True) is Role.SPRAY
    for a, b in [(True, True), (False, False), (None, True), (True, None), (None, None)]:
        assert choose_role(a, b) is None  # never hard<->hard, never on a guess


def test_public_v4() -> None:
    assert is_public_v4(AP("203.0.113.9:1")) and is_public_v4(AP("8.8.8.8:53"))
    for a in ("10.0.0.1:1", "172.16.3.3:1", "192.168.0.1:1", "100.64.0.1:1", "127.0.0.1:1",
              "169.254.1.1:1", "[2001:db8::1]:1", "0.0.0.0:1"):  # fmt: skip
        assert not is_public_v4(AP(a)), a


@pytest.mark.parametrize(
    "kw",
    [
        {"packets": -1},
        {"seconds": 0},
        {"ports": 0},
        {"ports": 5000},
        {"rate": 0},
        {"cooldown": -1},
        {"seconds": 61},
    ],
)
def test_budget_refuses_bad_values(kw: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="hard-NAT probe"):
        ProbeBudget(**kw)  # type: ignore[arg-type]


def test_off_switch_and_no_public_endpoint() -> None:
    p = ProbePlanner(ProbeBudget(packets=0), os.urandom)
    assert not p.start(PEER, Role.SPRAY, HARD_EPS, 0.0)
    p = ProbePlanner(ProbeBudget(), os.urandom)
    assert not p.start(PEER, Role.SPRAY, [AP("10.2.0.2:41641")], 0.0)
    assert p.get_timer() is None and p.stats.attempts == 0


def test_spray_targets_the_public_ip_with_distinct_ports_within_budget() -> None:
    b = ProbeBudget(packets=500, rate=1000)
    p = ProbePlanner(b, seeded())
    assert p.start(PEER, Role.SPRAY, HARD_EPS, 0.0)
    assert p.get_timer() == START_DELAY  # ordinary discovery goes first
    sent = []
    t = 0.0
    while (nt := p.get_timer()) is not None and nt < 10:
        t = nt
        p.handle_timer(t)
        sent += [(t, pr) for pr in p.take_probes()]
    assert len(sent) == 500 == p.stats.sent
    assert {pr.dst.ip for _, pr in sent} == {HARD_EPS[0].ip} and all(pr.sock == 0 for _, pr in sent)
    ports = [pr.dst.port for _, pr in sent]
    assert len(set(ports)) == 500 and all(PORT_MIN <= x <= PORT_MAX for x in ports)
    assert sent[-1][0] - sent[0][0] < 0.6  # paced at 1000/s: ~0.5 s
    assert p.stats.gave_up == 1 and not p.running(PEER)  # ended at its deadline
    assert sent[-1][0] <= START_DELAY + b.seconds and t == START_DELAY + b.seconds + LATE_PONG


def test_spray_stops_at_the_first_pong_and_later_pongs_are_not_successes() -> None:
    p = ProbePlanner(ProbeBudget(packets=2000, rate=1000), seeded())
    p.start(PEER, Role.SPRAY, HARD_EPS, 0.0)
    p.handle_timer(START_DELAY)
    first = p.take_probes()
    assert first
    assert p.note_pong(first[3].tx_id, 0.6) == PEER
    assert p.note_pong(first[4].tx_id, 0.6) is None
    assert p.note_pong(b"x" * 12, 0.6) is None
    run(p, 0.6, 5.0)
    assert p.take_probes() == [] and p.stats.sent == len(first) and p.stats.successes == 1
    assert not p.running(PEER)


def test_direct_path_ends_the_attempt_and_counts_a_met_probe() -> None:
    p = ProbePlanner(ProbeBudget(rate=1000), seeded())
    p.start(PEER, Role.SPRAY, HARD_EPS, 0.0)
    p.handle_timer(START_DELAY)
    hit = p.take_probes()[0].dst
    p.note_direct(PEER, hit)
    assert p.stats.successes == 1 and not p.running(PEER)
    p.start(OTHER, Role.SPRAY, HARD_EPS, 0.0)
    p.note_direct(OTHER, AP("10.2.0.2:41641"))  # found on the LAN: not ours
    assert p.stats.stopped == 1 and p.stats.successes == 1


def test_cooldown_between_attempts() -> None:
    b = ProbeBudget(packets=10, cooldown=60)
    p = ProbePlanner(b, seeded())
    assert p.start(PEER, Role.SPRAY, HARD_EPS, 0.0)
    assert not p.start(PEER, Role.SPRAY, HARD_EPS, 1.0)  # running
    run(p, 0.0, 5.0)
    assert not p.start(PEER, Role.SPRAY, HARD_EPS, 30.0)  # cooling down
    assert p.start(PEER, Role.SPRAY, HARD_EPS, 61.0)


def test_open_uses_sockets_then_releases_all_but_the_winner() -> None:
    b = ProbeBudget(packets=2048, ports=64)
    p = ProbePlanner(b, seeded())
    assert p.start(PEER, Role.OPEN, EASY_EPS, 0.0)
    p.handle_timer(START_DELAY)
    probes = p.take_probes()
    assert len(probes) == 64 and {pr.dst for pr in probes} == {EASY_EPS[0]}
    socks = {pr.sock for pr in probes}
    assert len(socks) == 64 and 0 not in socks and p.sockets() == socks
    win = sorted(socks)[5]
    assert not p.note_received(win, OTHER, EASY_EPS[0], 0.7)  # not that peer's socket
    assert p.note_received(win, PEER, EASY_EPS[0], 0.7)
    assert p.sockets() == {win} and p.routes() == {EASY_EPS[0]: win}
    assert p.stats.successes == 1 and not p.running(PEER)
    p.forget(PEER)
    assert p.sockets() == frozenset() and p.routes() == {}


def test_open_without_success_closes_everything_at_the_deadline() -> None:
    b = ProbeBudget(packets=2048, ports=32, seconds=2)
    p = ProbePlanner(b, seeded())
    p.start(PEER, Role.OPEN, EASY_EPS, 0.0)
    bursts = run(p, 0.0, 4.0)
    assert [n for _, n in bursts] == [32, 32]  # two rounds: at the start and half-way
    assert p.sockets() == frozenset() and p.stats.gave_up == 1 and p.stats.sent == 64


def test_open_budget_caps_the_sockets() -> None:
    p = ProbePlanner(ProbeBudget(packets=20, ports=256), seeded())
    p.start(PEER, Role.OPEN, EASY_EPS, 0.0)
    run(p, 0.0, 5.0)
    assert p.stats.sent <= 20


@settings(max_examples=60, deadline=None)
@given(
    packets=st.integers(1, 3000),
    ports=st.integers(1, 300),
    seconds=st.floats(0.1, 5.0),
    rate=st.integers(1, 5000),
    role=st.sampled_from(Role),
    steps=st.lists(st.floats(0.0, 0.7), min_size=1, max_size=60),
    seed=st.integers(0, 2**32),
)
def test_never_exceeds_budget_nor_deadline(
    packets: int, ports: int, seconds: float, rate: int, role: Role, steps: list[float],
    seed: int,
) -> None:  # fmt: skip
    b = ProbeBudget(packets=packets, ports=ports, seconds=seconds, rate=rate)
    p = ProbePlanner(b, seeded(seed))
    t = 0.0
    if not p.start(PEER, role, HARD_EPS if role is Role.SPRAY else EASY_EPS, t):
        return
    end = START_DELAY + seconds
    sent = 0
    for dt in [*steps, 100.0]:
        t += dt
        nt = p.get_timer()
        assert nt is None or nt >= 0
        if nt is not None and nt <= t:
            p.handle_timer(t)
        got = p.take_probes()
        if got:
            assert t <= end + 1e-9  # nothing after the deadline
        sent += len(got)
        assert sent <= packets and len(p.sockets()) <= ports
    assert not p.running(PEER) and p.sockets() == frozenset()
    assert p.stats.sent == sent <= packets


def test_timer_never_spins() -> None:
    """Once a spray's budget is spent the next deadline is its end, not 'now' again."""
    p = ProbePlanner(ProbeBudget(packets=5, rate=1000), seeded())
    p.start(PEER, Role.SPRAY, HARD_EPS, 0.0)
    p.handle_timer(START_DELAY)
    assert len(p.take_probes()) == 5
    nt = p.get_timer()
    assert nt is not None and nt > START_DELAY + 1


def test_daemon_flags_make_the_budget_and_refuse_bad_values() -> None:
    from meshscale.node.main import build_parser, check_args, hard_nat_budget

    args = build_parser().parse_args([])
    assert check_args(args) is None and hard_nat_budget(args) == ProbeBudget()
    args = build_parser().parse_args(["--hard-nat-probes", "0"])
    assert check_args(args) is None and not hard_nat_budget(args).enabled
    args = build_parser().parse_args(["--hard-nat-probes=300", "--hard-nat-ports=16"])
    assert hard_nat_budget(args) == ProbeBudget(packets=300, ports=16)
    for bad in (["--hard-nat-ports=0"], ["--hard-nat-seconds=-1"], ["--hard-nat-probes=-5"]):
        problem = check_args(build_parser().parse_args(bad))
        assert problem is not None and problem.startswith("--hard-nat-"), (bad, problem)
