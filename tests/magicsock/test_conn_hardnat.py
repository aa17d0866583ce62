"""Conn + hard-NAT probing against modelled NATs: an easy (port-preserving, endpoint-filtering)
and a hard (random port per destination) router, as the lab's nftables routers behave
(meshscale.lab.nat). Two Conn cores, their datagrams carried through the NAT models."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from meshscale.disco import AddrPort
from meshscale.key import DiscoPrivate, NodePrivate
from meshscale.magicsock import Conn, PeerConfig, Report
from meshscale.magicsock.hardnat import ProbeBudget

AP = AddrPort.parse
E_IN, E_PUB = AP("10.1.0.2:41641"), AP("203.0.113.12:41641")
H_IN, H_PUB_IP = AP("10.2.0.2:41641"), "203.0.113.13"
H_STUN = AP(f"{H_PUB_IP}:54541")


def report(varies: bool, mapped: AddrPort) -> Report:
    return Report(0.0, True, True, False, mapped, None, varies, {900: 0.01}, {900: 0.01}, {},
                  900, (mapped,), True)  # fmt: skip


@dataclass
class Side:
    conn: Conn
    hard: bool
    pub_ip: str
    rng: random.Random
    # hard: (inside port, dst) -> public port; easy: remotes we sent to (the filter)
    maps: dict[tuple[int, AddrPort], int] = field(default_factory=dict)
    sent_to: set[AddrPort] = field(default_factory=set)

    def out(self, inside_port: int, dst: AddrPort) -> AddrPort:
        """The packet's public source after this side's NAT."""
        if not self.hard:
            self.sent_to.add(dst)
            return AP(f"{self.pub_ip}:{inside_port}")
        key = (inside_port, dst)
        if key not in self.maps:
            self.maps[key] = self.rng.randrange(1024, 65536)
        return AP(f"{self.pub_ip}:{self.maps[key]}")

    def inbound(self, src: AddrPort, dst_port: int) -> int | None:
        """The inside port (socket) a packet from ``src`` to our public ``dst_port`` reaches."""
        if not self.hard:
            return dst_port if src in self.sent_to else None
        for (inside, remote), pub in self.maps.items():
            if pub == dst_port and remote == src:
                return inside
        return None


AUX_BASE = 50000  # inside port of extra socket n: AUX_BASE + n


def make(seed: int, varies: bool, budget: ProbeBudget | None) -> Conn:
    node, dk = NodePrivate(bytes([seed]) * 32), DiscoPrivate(bytes([seed + 50]) * 32)
    r = random.Random(seed)
    c = Conn(node.public(), dk, rand=r.randbytes, local_port=41641, hard_nat=budget)
    c.netcheck._last = report(varies, H_STUN if varies else E_PUB)  # a finished netcheck
    return c


def run(e_hard: bool, h_hard: bool, budget: ProbeBudget | None = None, secs: float = 6.0):  # type: ignore[no-untyped-def]
    a = Side(make(1, e_hard, budget), e_hard, "203.0.113.12", random.Random(5))
    b = Side(make(2, h_hard, budget), h_hard, H_PUB_IP, random.Random(6))
    a_in, b_in = E_IN, H_IN
    ka, kb = NodePrivate(bytes([1]) * 32).public(), NodePrivate(bytes([2]) * 32).public()
    da, db = DiscoPrivate(bytes([51]) * 32).public(), DiscoPrivate(bytes([52]) * 32).public()
    a_eps = (H_STUN if e_hard else E_PUB, a_in)
    b_eps = (H_STUN if h_hard else AP(f"{H_PUB_IP}:41641"), b_in)
    for c in (a.conn, b.conn):
        c.home_derp = 900
    a.conn.set_peers([PeerConfig(kb, db, b_eps, 900, h_hard)], 0.0)
    b.conn.set_peers([PeerConfig(ka, da, a_eps, 900, e_hard)], 0.0)
    sides = ((a, b, ka), (b, a, kb))
    now = 0.0
    while now < secs:
        a.conn.send(kb, b"\x04\x00\x00\x00" + bytes(28), now)  # traffic: discovery runs
        for _ in range(3):
            for src, dst, key in sides:
                c = src.conn
                c.handle_timer(now)
                out = [(41641, d, to) for d, to in c.datagrams_to_send()]
                out += [(AUX_BASE + s, d, to) for s, d, to in c.aux_datagrams_to_send()]
                for inside, data, to in out:
                    if to.ip.packed != bytes(map(int, dst.pub_ip.split("."))):
                        continue  # a private address: unroutable between the LANs
                    pub_src = src.out(inside, to)
                    port = dst.inbound(pub_src, to.port)
                    if port is not None:
                        sock = 0 if port == 41641 else port - AUX_BASE
                        dst.conn.receive_datagram(data, pub_src, now, sock)
                for region, _peer, data in c.derp_to_send():
                    dst.conn.receive_derp(data, key, region, now)
                dst.conn.received_wireguard()
        now += 0.02
    return a.conn, b.conn, kb, ka


def test_easy_and_hard_go_direct_within_budget() -> None:
    budget = ProbeBudget(packets=2048, ports=256)
    e, h, kh, ke = run(False, True, budget)
    se, sh = e.peer_status(kh, 6.0), h.peer_status(ke, 6.0)
    assert se is not None and sh is not None
    assert se.best is not None and str(se.best.ip) == H_PUB_IP and se.trusted, se
    assert sh.best == E_PUB and sh.trusted, sh
    for c in (e, h):
        st = c.hardnat.stats
        assert st.attempts == 1 and st.successes == 1 and st.sent <= budget.packets, st
    assert len(h.aux_sockets()) == 1  # the winner; the other 255 are closed
    assert e.statistics().counters["hardnat_sent"] == e.hardnat.stats.sent


def test_hard_and_hard_never_probe() -> None:
    a, b, kb, ka = run(True, True)
    for c, k in ((a, kb), (b, ka)):
        assert c.hardnat.stats.attempts == 0 and c.hardnat.stats.sent == 0
        st = c.peer_status(k, 6.0)
        assert st is not None and st.best is None
        assert c.aux_sockets() == frozenset()


def test_off_switch_leaves_easy_and_hard_relayed() -> None:
    e, h, kh, _ = run(False, True, ProbeBudget(packets=0))
    assert e.hardnat.stats.sent == 0 and h.hardnat.stats.sent == 0
    st = e.peer_status(kh, 6.0)
    assert st is not None and st.best is None
