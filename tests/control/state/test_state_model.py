"""State against a small model (hypothesis.stateful), key races, and crash durability."""

from __future__ import annotations

import ipaddress
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    precondition,
    rule,
)

from meshscale.control.models import Conflict, NodeID, PreAuthKeyError, UserID
from meshscale.control.names import is_valid_label
from meshscale.control.state import State, StateOptions
from meshscale.key import MachinePublic, NodePublic

SMALL = StateOptions(
    prefix_v4=ipaddress.IPv4Network("100.64.0.0/26"),
    prefix_v6=ipaddress.IPv6Network("fd7a:115c:a1e0::/120"),
)
HOSTNAMES = st.sampled_from(["laptop", "Laptop", "my laptop", "db-1", "", "x" * 70, "ü.local"])


class StateMachine(RuleBasedStateMachine):
    """The model: which users exist, which machines are registered for whom, and the
    addresses each node got first (which must never change while it exists)."""

    users = Bundle("users")

    def __init__(self) -> None:
        super().__init__()
        rng = random.Random(0)
        self.state = State.open(":memory:", SMALL, rand=rng.randbytes, randbelow=rng.randrange)
        self.model_users: dict[str, UserID] = {}
        self.model_nodes: dict[int, tuple[UserID, int]] = {}  # machine -> (user, node key)
        self.first_addrs: dict[NodeID, tuple[object, object]] = {}
        self.next_key = 1

    @rule(target=users, name=st.sampled_from(["alice", "bob", "carol", "dave"]))
    def create_user(self, name: str) -> str:
        if name in self.model_users:
            try:
                self.state.create_user(name)
            except Conflict:
                return name
            raise AssertionError("duplicate user accepted")
        self.model_users[name] = self.state.create_user(name).id
        return name

    @rule(name=consumes(users))
    def delete_user(self, name: str) -> None:
        if name not in self.model_users:
            return
        uid = self.model_users[name]
        owns = any(u == uid for u, _ in self.model_nodes.values())
        try:
            self.state.delete_user(uid)
        except Conflict:
            assert owns
            return
        assert not owns
        del self.model_users[name]

    @rule(name=users, machine=st.integers(0, 12), hostname=HOSTNAMES)
    def register(self, name: str, machine: int, hostname: str) -> None:
        if name not in self.model_users:
            return
        uid = self.model_users[name]
        self.next_key += 1
        node = self.state.register_node(
            MachinePublic(machine.to_bytes(32, "big")),
            NodePublic(self.next_key.to_bytes(32, "big")),
            uid,
            {"Hostname": hostname},
        )
        self.model_nodes[machine] = (uid, self.next_key)
        self.first_addrs.setdefault(node.id, (node.ipv4, node.ipv6))

    @rule(machine=st.integers(0, 12), pak=st.booleans())
    def register_with_key(self, machine: int, pak: bool) -> None:
        if not self.model_users:
            return
        uid = sorted(self.model_users.values())[0]
        secret = self.state.create_preauth_key(uid, reusable=pak).secret
        self.next_key += 1
        node = self.state.register_with_preauth_key(
            secret,
            MachinePublic(machine.to_bytes(32, "big")),
            NodePublic(self.next_key.to_bytes(32, "big")),
        )
        self.model_nodes[machine] = (uid, self.next_key)
        self.first_addrs.setdefault(node.id, (node.ipv4, node.ipv6))
        if not pak:
            with pytest.raises(PreAuthKeyError):
                self.state.use_preauth_key(secret)

    @precondition(lambda self: bool(self.model_nodes))
    @rule(data=st.data())
    def delete_node(self, data: st.DataObject) -> None:
        machine = data.draw(st.sampled_from(sorted(self.model_nodes)))
        node = self.state.get_node_by_machine_key(MachinePublic(machine.to_bytes(32, "big")))
        assert node is not None
        self.state.delete_node(node.id)
        del self.model_nodes[machine]
        del self.first_addrs[node.id]

    @precondition(lambda self: bool(self.model_nodes))
    @rule(data=st.data(), new=st.sampled_from(["a", "laptop", "laptop-1", "x-y", "Bad!"]))
    def rename(self, data: st.DataObject, new: str) -> None:
        machine = data.draw(st.sampled_from(sorted(self.model_nodes)))
        node = self.state.get_node_by_machine_key(MachinePublic(machine.to_bytes(32, "big")))
        assert node is not None
        holder = self.state.get_node_by_given_name(new)
        try:
            self.state.rename_node(node.id, new)
        except Conflict:
            assert holder is not None and holder.id != node.id
        except ValueError:
            assert not is_valid_label(new)

    @precondition(lambda self: bool(self.model_nodes) and bool(self.model_users))
    @rule(data=st.data())
    def move(self, data: st.DataObject) -> None:
        machine = data.draw(st.sampled_from(sorted(self.model_nodes)))
        name = data.draw(st.sampled_from(sorted(self.model_users)))
        node = self.state.get_node_by_machine_key(MachinePublic(machine.to_bytes(32, "big")))
        assert node is not None
        self.state.move_node(node.id, self.model_users[name])
        self.model_nodes[machine] = (self.model_users[name], self.model_nodes[machine][1])

    @rule(data=st.data())
    def delete_key(self, data: st.DataObject) -> None:
        keys = self.state.list_preauth_keys()
        if keys:
            self.state.delete_preauth_key(data.draw(st.sampled_from(keys)).id)

    @invariant()
    def matches_model(self) -> None:
        nodes = self.state.list_nodes()
        assert len(nodes) == len(self.model_nodes)
        for node in nodes:
            machine = int.from_bytes(node.machine_key.raw, "big")
            uid, key = self.model_nodes[machine]
            assert node.user_id == uid
            assert node.node_key == NodePublic(key.to_bytes(32, "big"))
        assert {u.name for u in self.state.list_users()} == set(self.model_users)

    @invariant()
    def addresses_unique_and_stable(self) -> None:
        nodes = self.state.list_nodes()
        v4 = [n.ipv4 for n in nodes]
        v6 = [n.ipv6 for n in nodes]
        assert len(set(v4)) == len(v4) and len(set(v6)) == len(v6)
        for n in nodes:
            assert n.ipv4 in SMALL.prefix_v4  # type: ignore[operator]
            assert n.ipv6 in SMALL.prefix_v6  # type: ignore[operator]
            assert (n.ipv4, n.ipv6) == self.first_addrs[n.id]

    @invariant()
    def given_names_unique_and_valid(self) -> None:
        names = [n.given_name for n in self.state.list_nodes()]
        assert len(set(names)) == len(names)
        assert all(is_valid_label(n) for n in names)

    @invariant()
    def database_agrees_with_memory(self) -> None:
        snap = self.state.store.load()
        assert sorted(snap.nodes, key=lambda n: n.id) == [
            n.__class__(**{**{f: getattr(n, f) for f in n.__dataclass_fields__}, "online": False})
            for n in self.state.list_nodes()
        ]

    def teardown(self) -> None:
        self.state.close()


TestStateMachine = pytest.mark.slow(StateMachine.TestCase)
TestStateMachine.settings = settings(
    max_examples=40,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


# ---- the single-use key race ------------------------------------------------------------


def test_threads_racing_on_one_single_use_key() -> None:
    state = State.open(":memory:")
    uid = state.create_user("alice").id
    secret = state.create_preauth_key(uid).secret
    barrier = threading.Barrier(8)
    wins: list[NodeID] = []
    losses: list[str] = []

    def racer(i: int) -> None:
        barrier.wait()
        try:
            node = state.register_with_preauth_key(
                secret, MachinePublic(bytes([i + 1]) * 32), NodePublic(bytes([i + 1]) * 32)
            )
            wins.append(node.id)
        except PreAuthKeyError as exc:
            losses.append(str(exc))

    threads = [threading.Thread(target=racer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(wins) == 1
    assert losses == ["authkey already used"] * 7
    assert len(state.list_nodes()) == 1


@pytest.mark.slow
def test_two_servers_racing_on_one_single_use_key(tmp_path: Path) -> None:
    """Two State instances (two connections, separate memory) share the database: the
    conditional UPDATE admits exactly one registration."""
    path = tmp_path / "db.sqlite"
    setup = State.open(path)
    uid = setup.create_user("alice").id
    secrets = [setup.create_preauth_key(uid).secret for _ in range(10)]
    setup.close()
    # Two servers on one database do not share memory: give them disjoint address
    # pools so only the key decides (State is meant to be the one owner).
    a = State.open(
        path, StateOptions(prefix_v4=ipaddress.IPv4Network("100.64.0.0/24"), prefix_v6=None)
    )
    b = State.open(
        path, StateOptions(prefix_v4=ipaddress.IPv4Network("100.64.1.0/24"), prefix_v6=None)
    )
    for round_, secret in enumerate(secrets):
        barrier = threading.Barrier(2)
        results: list[bool] = []

        def racer(
            state: State,
            n: int,
            secret: str = secret,
            barrier: threading.Barrier = barrier,
            results: list[bool] = results,
        ) -> None:
            barrier.wait()
            try:
                state.register_with_preauth_key(
                    secret,
                    MachinePublic(bytes([n]) * 32),
                    NodePublic(bytes([n]) * 32),
                    {"Hostname": f"n{n}"},
                )
                results.append(True)
            except PreAuthKeyError:
                results.append(False)

        ts = [
            threading.Thread(target=racer, args=(s, 2 * round_ + i + 1))
            for i, s in enumerate((a, b))
        ]
        for t in ts:
            t.start()
        for t in ts:
            t.join(10)
        assert sorted(results) == [False, True], round_
    a.close()
    b.close()
    final = State.open(path)
    assert len(final.list_nodes()) == len(secrets)
    final.close()


# ---- kill -9 mid-registration -------------------------------------------------------------

_CHILD = textwrap.dedent(
    """
    import sys
    from meshscale.control.state import State
    from meshscale.key import MachinePublic, NodePublic

    state = State.open(sys.argv[1])
    uid = state.get_user_by_name("alice").id
    secret = sys.argv[2]
    for i in range(1, 100000):
        node = state.register_with_preauth_key(
            secret, MachinePublic(i.to_bytes(32, "big")), NodePublic(i.to_bytes(32, "big")),
            {"Hostname": f"n{i}"},
        )
        # Soft state (no fsync) must survive a process crash too.
        state.update_node(node.id, endpoints=[f"192.0.2.1:{i}"])
        # Only after the calls returned is the registration acknowledged.
        print(node.id, node.ipv4, flush=True)
    """
)


@pytest.mark.slow
def test_sigkill_mid_registration_loses_nothing_acknowledged(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    setup = State.open(path)
    uid = setup.create_user("alice").id
    secret = setup.create_preauth_key(uid, reusable=True).secret
    setup.close()
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(path), secret],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    acked: list[tuple[NodeID, str]] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            id_text, ipv4 = line.split()
            acked.append((NodeID(int(id_text)), ipv4))
            if len(acked) >= 40:
                break
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    assert len(acked) == 40
    state = State.open(path)
    stored = {n.id: (str(n.ipv4), n.endpoints) for n in state.list_nodes()}
    for i, (node_id, ipv4) in enumerate(acked, start=1):
        assert stored.get(node_id) == (ipv4, (f"192.0.2.1:{i}",))
    # The database is consistent after the crash: registration continues.
    fresh = state.register_with_preauth_key(
        secret, MachinePublic(b"\xff" * 32), NodePublic(b"\xff" * 32)
    )
    assert fresh.ipv4 not in {n.ipv4 for n in state.list_nodes() if n.id != fresh.id}
    state.close()
