"""The engine's control thread on a fake clock: it sleeps until the device's next deadline.

The engine's real control loop runs in the test thread; its ThreadTimer waits on ``World``,
a fake event that, while the thread "sleeps", delivers datagrams between the engine and a
bare remote ``wireguard.Device`` and runs scripted inputs (TX batches as the TX thread would
feed them), jumping the clock from one event to the next. Nothing here sleeps for real.
"""

from __future__ import annotations

import ipaddress
import itertools
import math
import os
from collections.abc import Callable, Sequence

import pytest

from meshscale.io.timer import ThreadTimer
from meshscale.wgengine import Engine
from meshscale.wireguard import Device, Endpoint
from meshscale.wireguard.constants import KEEPALIVE_TIMEOUT, REKEY_TIMEOUT, REKEY_TIMEOUT_JITTER_MAX
from meshscale.wireguard.crypto import clamp, public_key
from meshscale.wireguard.uapi import PeerChange, SetRequest

from ..wireguard.helpers import ipv4_packet, seeded_rand

ENGINE_EP: Endpoint = ("192.0.2.1", 51820)
REMOTE_EP: Endpoint = ("192.0.2.2", 51820)
LATENCY = 0.01  # seconds each way
INITIATION, TRANSPORT = 1, 4
KEEPALIVE_SIZE = 32  # an empty transport message


class Idle(Exception):
    """The control thread would sleep forever: no deadline, nothing in flight."""


class Stop(Exception):
    """The run reached its end time."""


class World:
    """Fake clock + event for the engine's timer, the remote peer, and the wire."""

    def __init__(self) -> None:
        self.now = 100.0
        self.flag = False
        self.stop_at = math.inf
        self.wire: list[tuple[float, str, bytes]] = []  # (arrival, "remote" | "engine", data)
        self.actions: list[tuple[float, Callable[[], None]]] = []
        self.sent_by_engine: list[tuple[float, bytes]] = []
        self.remote_inbox: list[bytes] = []
        self.drop_to_remote = False
        self.drop_to_engine = False
        rand = seeded_rand(7)
        self.engine_key, remote_key = clamp(rand(32)), clamp(rand(32))
        self.remote = Device(rand=rand, wall_offset_ns=10**18)
        self.remote.set_private_key(remote_key)
        peer = self.remote.add_peer(public_key(self.engine_key))
        self.remote.allowed_ips.insert(ipaddress.ip_network("10.0.0.1/32"), peer)
        self.remote.set_endpoint(peer, ENGINE_EP)
        self.remote_public = public_key(remote_key)
        self.engine: Engine | None = None

    # ---- the Event the engine's ThreadTimer waits on ----

    def clock(self) -> float:
        return self.now

    def set(self) -> None:
        self.flag = True

    def clear(self) -> None:
        self.flag = False

    def wait(self, timeout: float | None = None) -> bool:
        end = math.inf if timeout is None else self.now + timeout
        while not self.flag:
            nxt = self._next_time()
            target = min(end, math.inf if nxt is None else nxt)
            if target == math.inf:
                raise Idle
            if target > self.stop_at:
                self.now = self.stop_at
                raise Stop
            self.now = max(self.now, target)
            if nxt is None or nxt > end:
                return False
            self._step()
        return True

    # ---- the world ----

    def _next_time(self) -> float | None:
        times = [t for t, _, _ in self.wire] + [t for t, _ in self.actions]
        if (t := self.remote.get_timer()) is not None:
            times.append(t)
        return min(times) if times else None

    def _step(self) -> None:
        now = self.now
        for item in sorted(a for a in self.actions if a[0] <= now):
            self.actions.remove(item)
            item[1]()
        due = [w for w in self.wire if w[0] <= now]
        self.wire = [w for w in self.wire if w[0] > now]
        for _, dst, data in due:
            if dst == "remote":
                self.remote_inbox += self.remote.receive_datagrams([(data, ENGINE_EP)], now)
                self._collect_remote()
            else:
                assert self.engine is not None
                self.engine._rx_batch([(data, REMOTE_EP)])
        if (t := self.remote.get_timer()) is not None and t <= now:
            self.remote.handle_timer(now)
            self._collect_remote()

    def _collect_remote(self) -> None:
        for _, data in self.remote.datagrams_to_send():
            if not self.drop_to_engine:
                self.wire.append((self.now + LATENCY, "engine", data))

    def from_engine(self, data: bytes) -> None:
        self.sent_by_engine.append((self.now, data))
        if not self.drop_to_remote:
            self.wire.append((self.now + LATENCY, "remote", data))

    def remote_sends(self, packet: bytes) -> None:
        for _, msgs in self.remote.encrypt_packets([packet], self.now):
            for parts in msgs:
                if not self.drop_to_engine:
                    self.wire.append((self.now + LATENCY, "engine", b"".join(parts)))
        self._collect_remote()

    def run(self, engine: Engine, until: float) -> None:
        """Run the engine's control loop until the clock reaches ``until`` (or it idles)."""
        self.stop_at = until
        with pytest.raises((Stop, Idle)):
            engine._control()

    # ---- what the engine sent ----

    def times(self, kind: int, size: int | None = None) -> list[float]:
        return [
            t for t, d in self.sent_by_engine if d[0] == kind and (size is None or len(d) == size)
        ]


class FakeBind:
    def __init__(self, world: World) -> None:
        self.world = world

    def open(self, port: int) -> int:
        return port or 51820

    def send(self, ep: Endpoint, messages: list[list[bytes]]) -> None:
        for parts in messages:
            self.world.from_engine(b"".join(parts))

    def send_one(self, ep: Endpoint, data: bytes) -> None:
        self.world.from_engine(data)

    def receive(self) -> list[tuple[bytes | memoryview, Endpoint]]:
        raise AssertionError("no RX thread in these tests")

    def close(self) -> None:
        pass


class FakeTun:
    name = "fake0"
    mtu = 1420

    def __init__(self) -> None:
        self.written: list[bytes] = []

    def read_batch(
        self, max_packets: int = 128, *, pad: bool = False, lone: bool = False
    ) -> list[memoryview]:
        raise AssertionError("no TX thread in these tests")

    def write_batch(self, packets: Sequence[bytes | bytearray | memoryview]) -> int:
        self.written += [bytes(p) for p in packets]
        return len(packets)

    def close(self) -> None:
        pass


def engine_in(world: World, *, keepalive: int | None = None) -> Engine:
    timer = ThreadTimer(interval=0.25, clock=world.clock, event=world)
    engine = Engine(FakeTun(), FakeBind(world), clock=world.clock, timer=timer)
    world.engine = engine
    engine.uapi_set(
        SetRequest(
            private_key=world.engine_key,
            peers=[
                PeerChange(
                    public_key=world.remote_public,
                    endpoint=REMOTE_EP,
                    allowed_ips_add=[ipaddress.ip_network("10.0.0.2/32")],
                    persistent_keepalive_interval=keepalive,
                )
            ],
        )
    )
    return engine


def to_remote() -> list[bytes]:
    return [ipv4_packet("10.0.0.1", "10.0.0.2", os.urandom(40))]


def test_idle_engine_never_wakes() -> None:
    world = World()
    engine = engine_in(world)
    world.stop_at = world.now + 3600  # a thread that kept waking would get here (Stop)
    with pytest.raises(Idle):  # nothing due: the control thread sleeps with no timeout
        engine._control()
    assert engine.timer.wakeups == 1  # only for the UAPI change that configured the peer
    assert world.sent_by_engine == []


def test_handshake_retransmits_fire_on_time_and_nothing_else_wakes() -> None:
    world = World()
    engine = engine_in(world)
    world.drop_to_remote = True  # the peer is unreachable: retransmit until giving up
    world.actions.append((100.0, lambda: engine._tx_batch(to_remote())))
    world.run(engine, until=160.0)
    sent = world.times(INITIATION)
    gaps = [b - a for a, b in itertools.pairwise(sent)]
    assert len(sent) >= 11
    assert all(REKEY_TIMEOUT <= g < REKEY_TIMEOUT + REKEY_TIMEOUT_JITTER_MAX for g in gaps), gaps
    # UAPI, the TX poke and the end of its quiet period, then one wake per retransmit
    # (the 250 ms tick this replaces woke 240 times in these 60 s).
    assert engine.timer.wakeups == 3 + len(gaps)


def test_passive_keepalive_and_new_handshake_timers_fire() -> None:
    world = World()
    engine = engine_in(world)
    world.actions.append((100.0, lambda: engine._tx_batch(to_remote())))
    # Data from the peer at 120 s: we owe it a keepalive 10 s later (nothing else to send).
    world.actions.append((120.0, lambda: world.remote_sends(ipv4_packet("10.0.0.2", "10.0.0.1"))))
    world.run(engine, until=135.0)
    assert world.remote_inbox and len(engine.tun.written) == 1  # type: ignore[attr-defined]
    keepalives = world.times(TRANSPORT, KEEPALIVE_SIZE)
    assert keepalives, world.sent_by_engine
    assert abs(keepalives[-1] - (120.0 + LATENCY + KEEPALIVE_TIMEOUT)) < 1e-6
    # Data to a peer that stops answering: a new handshake KEEPALIVE + REKEY_TIMEOUT later.
    world.drop_to_engine = True
    world.actions.append((140.0, lambda: engine._tx_batch(to_remote())))
    world.run(engine, until=170.0)
    late = [t for t in world.times(INITIATION) if t > 140.0]
    due = 140.0 + KEEPALIVE_TIMEOUT + REKEY_TIMEOUT
    assert late and due <= late[0] < due + REKEY_TIMEOUT_JITTER_MAX, late
    assert engine.timer.wakeups < 40  # the tick would have woken 280 times in 70 s


def test_persistent_keepalive_every_interval_while_idle() -> None:
    world = World()
    engine = engine_in(world, keepalive=25)
    world.run(engine, until=300.0)
    keepalives = world.times(TRANSPORT, KEEPALIVE_SIZE)
    gaps = [b - a for a, b in itertools.pairwise(keepalives)]
    assert len(keepalives) >= 7
    assert all(abs(g - 25.0) < 1e-6 for g in gaps), gaps
    # A handful of wakes for the handshake, then one per keepalive (the tick: 800).
    assert engine.timer.wakeups <= len(keepalives) + 8
