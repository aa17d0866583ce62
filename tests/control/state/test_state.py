"""State: users, keys, node registration, the change bus, pending registrations, GC."""

from __future__ import annotations

import asyncio
import ipaddress
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshscale.control.db import Snapshot
from meshscale.control.ipalloc import AllocationStrategy
from meshscale.control.models import (
    APIKeyError,
    Conflict,
    InvalidArgument,
    NodeAdded,
    NodeChanged,
    NodeID,
    NodeRemoved,
    NotFound,
    PreAuthKeyError,
    RegisterMethod,
    RegistrationFailed,
    ResyncRequired,
    UserChanged,
    UserID,
)
from meshscale.control.state import State, StateOptions
from meshscale.key import DiscoPublic, MachinePublic, NodePublic

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


class FakeClock:
    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kw: float) -> None:
        self.now += timedelta(**kw)


def mk(n: int) -> MachinePublic:
    return MachinePublic(n.to_bytes(2, "big") * 16)


def nk(n: int) -> NodePublic:
    return NodePublic((n + 50000).to_bytes(4, "big") * 8)


def make_state(
    path: str | Path = ":memory:",
    clock: FakeClock | None = None,
    seed: int = 1,
    options: StateOptions | None = None,
) -> State:
    rng = random.Random(seed)
    return State.open(
        path, options, clock=clock or FakeClock(), rand=rng.randbytes, randbelow=rng.randrange
    )


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def state(clock: FakeClock) -> State:
    return make_state(clock=clock)


# ---- users ------------------------------------------------------------------------------


def test_user_crud(state: State) -> None:
    alice = state.create_user("alice", display_name="Alice", email="alice@example.org")
    assert state.get_user_by_name("alice") == alice
    assert alice.created_at == T0
    with pytest.raises(Conflict, match="already exists"):
        state.create_user("alice")
    bob = state.create_user("bob")
    assert [u.name for u in state.list_users()] == ["alice", "bob"]
    with pytest.raises(Conflict):
        state.rename_user(bob.id, "alice")
    assert state.rename_user(bob.id, "robert").name == "robert"
    state.delete_user(bob.id)
    with pytest.raises(NotFound):
        state.get_user(bob.id)
    with pytest.raises(NotFound):
        state.get_user_by_name("robert")


@pytest.mark.parametrize("name", ["", " alice", "al ice", "-x", "a" * 64, "ali\nce"])
def test_user_names_are_validated(state: State, name: str) -> None:
    with pytest.raises(InvalidArgument):
        state.create_user(name)


def test_user_with_nodes_cannot_be_deleted(state: State) -> None:
    u = state.create_user("alice")
    node = state.register_node(mk(1), nk(1), u.id, {"Hostname": "a"})
    with pytest.raises(Conflict, match="still has nodes"):
        state.delete_user(u.id)
    state.delete_node(node.id)
    key = state.create_preauth_key(u.id)
    state.delete_user(u.id)
    with pytest.raises(NotFound):
        state.get_preauth_key(key.key.id)


# ---- pre-auth keys ----------------------------------------------------------------------


def test_preauth_key_format_and_storage(state: State) -> None:
    u = state.create_user("alice")
    new = state.create_preauth_key(u.id, reusable=True, tags=["tag:web", "tag:db", "tag:web"])
    prefix = new.key.prefix
    assert new.secret.startswith(f"hskey-auth-{prefix}-")
    assert len(new.secret) == len("hskey-auth-") + 12 + 1 + 64
    assert new.secret not in repr(new.key)  # only the hash is kept
    assert new.key.tags == ("tag:db", "tag:web")
    assert new.key.expiration == T0 + timedelta(hours=1)
    assert state.validate_preauth_key(new.secret) == new.key
    assert new.key.display() == f"hskey-auth-{prefix}-***"


@pytest.mark.parametrize(
    "mangle",
    [
        lambda s: s[:-1] + ("0" if s[-1] != "0" else "1"),  # wrong secret
        lambda s: s.replace("hskey-auth-", "hskey-api-"),
        lambda s: s[:20],
        lambda s: "",
        lambda s: "hskey-auth-" + "0" * 12 + "-" + s[-64:],  # unknown prefix
        lambda s: s + "0",
    ],
)
def test_invalid_preauth_keys(state: State, mangle) -> None:  # type: ignore[no-untyped-def]
    u = state.create_user("alice")
    secret = state.create_preauth_key(u.id).secret
    with pytest.raises(PreAuthKeyError, match="invalid authkey"):
        state.validate_preauth_key(mangle(secret))


def test_preauth_key_expiry(state: State, clock: FakeClock) -> None:
    u = state.create_user("alice")
    new = state.create_preauth_key(u.id, reusable=True)
    clock.advance(minutes=59)
    state.validate_preauth_key(new.secret)
    clock.advance(minutes=1)
    with pytest.raises(PreAuthKeyError, match="authkey expired"):
        state.validate_preauth_key(new.secret)
    other = state.create_preauth_key(u.id, expiration=T0 + timedelta(days=7))
    state.expire_preauth_key(other.key.id)
    with pytest.raises(PreAuthKeyError, match="authkey expired"):
        state.use_preauth_key(other.secret)


@pytest.mark.parametrize("tag", ["web", "tag:", "tag:a b", "tag:-x"])
def test_preauth_key_tags_are_validated(state: State, tag: str) -> None:
    u = state.create_user("alice")
    with pytest.raises(InvalidArgument):
        state.create_preauth_key(u.id, tags=[tag])


def test_single_use_key_admits_one_node(state: State) -> None:
    u = state.create_user("alice")
    secret = state.create_preauth_key(u.id).secret
    first = state.register_with_preauth_key(secret, mk(1), nk(1), {"Hostname": "one"})
    assert first.register_method is RegisterMethod.AUTH_KEY
    assert state.list_preauth_keys(u.id)[0].used
    with pytest.raises(PreAuthKeyError, match="already used"):
        state.register_with_preauth_key(secret, mk(2), nk(2), {"Hostname": "two"})
    assert len(state.list_nodes()) == 1


def test_restart_resends_used_key_without_consuming(state: State) -> None:
    """docs/protocol/control.md §3.3 item 5: same machine + node key + owner is a no-op
    re-registration."""
    u = state.create_user("alice")
    secret = state.create_preauth_key(u.id).secret
    first = state.register_with_preauth_key(secret, mk(1), nk(1), {"Hostname": "one"})
    again = state.register_with_preauth_key(secret, mk(1), nk(1), {"Hostname": "one"})
    assert again == first
    # Rotating the node key needs a valid key again: the used single-use key is refused.
    with pytest.raises(PreAuthKeyError, match="already used"):
        state.register_with_preauth_key(secret, mk(1), nk(2), {"Hostname": "one"})


def test_reusable_ephemeral_tagged_key(state: State) -> None:
    u = state.create_user("alice")
    new = state.create_preauth_key(u.id, reusable=True, ephemeral=True, tags=["tag:ci"])
    nodes = [state.register_with_preauth_key(new.secret, mk(i), nk(i)) for i in range(3)]
    assert all(n.ephemeral and n.tags == ("tag:ci",) for n in nodes)
    assert all(n.auth_key_id == new.key.id for n in nodes)
    assert not state.get_preauth_key(new.key.id).used


# ---- API keys ---------------------------------------------------------------------------


def test_api_keys(state: State, clock: FakeClock) -> None:
    new = state.create_api_key()
    assert new.secret.startswith("hskey-api-")
    assert state.verify_api_key(new.secret).last_seen == T0
    with pytest.raises(APIKeyError, match="invalid API key"):
        state.verify_api_key(new.secret[:-2] + "zz")
    with pytest.raises(APIKeyError, match="invalid API key"):
        state.verify_api_key("Bearer nonsense")
    assert state.get_api_key(new.key.display()) == state.get_api_key(new.key.id)
    state.expire_api_key(new.key.prefix)
    with pytest.raises(APIKeyError, match="expired"):
        state.verify_api_key(new.secret)
    short = state.create_api_key(expiration=T0 + timedelta(seconds=10))
    state.verify_api_key(short.secret)
    clock.advance(seconds=10)
    with pytest.raises(APIKeyError, match="expired"):
        state.verify_api_key(short.secret)
    state.delete_api_key(short.key.id)
    assert [k.id for k in state.list_api_keys()] == [new.key.id]


# ---- nodes ------------------------------------------------------------------------------


def test_addresses_are_sequential_unique_and_kept(state: State) -> None:
    u = state.create_user("alice")
    a = state.register_node(mk(1), nk(1), u.id, {"Hostname": "a"})
    b = state.register_node(mk(2), nk(2), u.id, {"Hostname": "b"})
    assert (a.ipv4, a.ipv6) == (
        ipaddress.IPv4Address("100.64.0.1"),
        ipaddress.IPv6Address("fd7a:115c:a1e0::1"),
    )
    assert b.ipv4 == ipaddress.IPv4Address("100.64.0.2")
    # Re-registration with a new node key keeps id, addresses and name.
    a2 = state.register_node(mk(1), nk(3), u.id, {"Hostname": "renamed-host"})
    assert (a2.id, a2.ipv4, a2.ipv6, a2.given_name) == (a.id, a.ipv4, a.ipv6, a.given_name)
    assert a2.hostname == "renamed-host"
    assert state.get_node_by_node_key(nk(1)) is None
    assert state.get_node_by_node_key(nk(3)) == a2
    assert state.get_node_by_machine_key(mk(1)) == a2


def test_node_key_bound_to_other_machine_is_refused(state: State) -> None:
    u = state.create_user("alice")
    state.register_node(mk(1), nk(1), u.id)
    with pytest.raises(Conflict, match="different machine key"):
        state.register_node(mk(2), nk(1), u.id)


def test_given_names_are_unique_and_renamable(state: State) -> None:
    u = state.create_user("alice")
    names = [
        state.register_node(mk(i), nk(i), u.id, {"Hostname": "My Laptop"}).given_name
        for i in range(3)
    ]
    assert names == ["my-laptop", "my-laptop-1", "my-laptop-2"]
    n0 = state.get_node_by_given_name("my-laptop")
    assert n0 is not None
    with pytest.raises(Conflict):
        state.rename_node(n0.id, "my-laptop-1")
    with pytest.raises(InvalidArgument):
        state.rename_node(n0.id, "Not_Valid")
    assert state.rename_node(n0.id, "work").given_name == "work"
    assert state.get_node_by_given_name("my-laptop") is None
    n3 = state.register_node(mk(3), nk(3), u.id, {"Hostname": "my laptop"})
    assert n3.given_name == "my-laptop"


def test_admin_edits(state: State, clock: FakeClock) -> None:
    alice, bob = state.create_user("alice"), state.create_user("bob")
    n = state.register_node(
        mk(1), nk(1), alice.id, {"Hostname": "r", "RoutableIPs": ["10.0.0.0/8", "junk"]}
    )
    assert state.set_tags(n.id, ["tag:b", "tag:a"]).tags == ("tag:a", "tag:b")
    assert state.move_node(n.id, bob.id).user_id == bob.id
    with pytest.raises(NotFound):
        state.move_node(n.id, UserID(999))
    n = state.approve_routes(n.id, ["10.0.0.0/8", "192.168.0.0/16"])
    assert [str(r) for r in n.approved_routes] == ["10.0.0.0/8", "192.168.0.0/16"]
    assert [str(r) for r in n.served_routes()] == ["10.0.0.0/8"]
    with pytest.raises(InvalidArgument):
        state.approve_routes(n.id, ["10.0.0.1/8"])
    assert state.expire_node(n.id).expiry == T0
    assert state.get_node(n.id).is_expired(clock())
    with pytest.raises(NotFound):
        state.get_node(NodeID(999))


def test_update_node_reports_changed_fields(state: State) -> None:
    u = state.create_user("alice")
    n = state.register_node(mk(1), nk(1), u.id, {"Hostname": "a"})
    sub = state.subscribe()
    state.update_node(n.id, endpoints=["192.0.2.1:41641"], disco_key=DiscoPublic(b"d" * 32))
    state.update_node(n.id, endpoints=["192.0.2.1:41641"])  # unchanged: no event
    state.update_hostinfo(n.id, {"Hostname": "b", "OS": "linux"})
    state.set_online(n.id, True)
    state.set_online(n.id, True)
    assert sub.drain() == [
        NodeChanged(n.id, frozenset({"endpoints", "disco_key"})),
        NodeChanged(n.id, frozenset({"hostinfo", "hostname"})),
        NodeChanged(n.id, frozenset({"online", "last_seen"})),
    ]
    assert state.get_node(n.id).online


def test_change_bus_events_and_overflow(state: State) -> None:
    sub = state.subscribe(max_queue=3)
    u = state.create_user("alice")
    n = state.register_node(mk(1), nk(1), u.id)
    state.delete_node(n.id)
    assert sub.drain() == [UserChanged(u.id), NodeAdded(n.id), NodeRemoved(n.id)]
    for i in range(5):
        state.register_node(mk(10 + i), nk(10 + i), u.id)
    assert sub.drain() == [ResyncRequired()]
    assert sub.dropped == 5  # 3 queued + the overflowing one + one after the resync
    sub.close()
    state.register_node(mk(30), nk(30), u.id)
    assert sub.drain() == []


def test_failed_write_publishes_nothing_and_keeps_memory_consistent(state: State) -> None:
    u = state.create_user("alice")
    state.register_node(mk(1), nk(1), u.id)
    sub = state.subscribe()
    gen = state.generation
    with pytest.raises(Conflict):
        state.register_node(mk(2), nk(1), u.id)
    assert sub.drain() == []
    assert state.generation == gen
    assert len(state.list_nodes()) == 1


def test_subscription_async_iteration(state: State) -> None:
    async def main() -> list[object]:
        sub = state.subscribe()
        got: list[object] = []

        async def reader() -> None:
            got.extend([change async for change in sub])

        task = asyncio.create_task(reader())
        await asyncio.sleep(0)
        u = state.create_user("alice")
        state.register_node(mk(1), nk(1), u.id)
        await asyncio.sleep(0)
        sub.close()
        await asyncio.wait_for(task, 5)
        return got

    got = asyncio.run(main())
    assert [type(c).__name__ for c in got] == ["UserChanged", "NodeAdded"]


def test_logout_expires_or_deletes_ephemeral(state: State, clock: FakeClock) -> None:
    u = state.create_user("alice")
    n = state.register_node(mk(1), nk(1), u.id)
    out = state.logout(n.id)
    assert out is not None and out.expiry == T0
    e = state.register_node(mk(2), nk(2), u.id, ephemeral=True)
    assert state.logout(e.id) is None
    with pytest.raises(NotFound):
        state.get_node(e.id)


def test_ephemeral_gc(clock: FakeClock) -> None:
    state = make_state(
        clock=clock, options=StateOptions(ephemeral_inactivity_timeout=timedelta(minutes=5))
    )
    u = state.create_user("alice")
    e = state.register_node(mk(1), nk(1), u.id, ephemeral=True)
    keep = state.register_node(mk(2), nk(2), u.id)
    state.set_online(e.id, True)
    clock.advance(minutes=10)
    assert state.gc().removed_nodes == ()  # online: never collected
    state.set_online(e.id, False)
    clock.advance(minutes=4)
    assert state.gc().removed_nodes == ()
    clock.advance(minutes=1)
    assert state.gc().removed_nodes == (e.id,)
    assert [n.id for n in state.list_nodes()] == [keep.id]


def test_random_allocation_stays_in_prefix() -> None:
    opts = StateOptions(
        prefix_v4=ipaddress.IPv4Network("100.64.7.0/29"),
        prefix_v6=None,
        allocation=AllocationStrategy.RANDOM,
    )
    state = make_state(options=opts)
    u = state.create_user("alice")
    nodes = [state.register_node(mk(i), nk(i), u.id) for i in range(6)]  # /29: 6 usable
    addrs = {n.ipv4 for n in nodes}
    assert len(addrs) == 6 and all(a in opts.prefix_v4 for a in addrs)  # type: ignore[operator]
    assert all(n.ipv6 is None for n in nodes)
    from meshscale.control.models import AddressExhausted

    with pytest.raises(AddressExhausted):
        state.register_node(mk(99), nk(99), u.id)
    state.delete_node(nodes[0].id)
    assert state.register_node(mk(99), nk(99), u.id).ipv4 == nodes[0].ipv4


# ---- pending registrations -------------------------------------------------------------


def test_interactive_registration_completes() -> None:
    clock = FakeClock()
    state = make_state(clock=clock)
    u = state.create_user("alice")

    async def main() -> None:
        reg = state.begin_registration(mk(1), nk(1), {"Hostname": "laptop"})
        assert state.get_registration(reg.id) is reg
        waiter = asyncio.create_task(reg.wait())
        await asyncio.sleep(0)
        node = state.complete_registration(reg.id, u.id)
        assert await asyncio.wait_for(waiter, 5) == node
        assert node.register_method is RegisterMethod.CLI
        assert state.get_registration(reg.id) is None
        with pytest.raises(NotFound):
            state.complete_registration(reg.id, u.id)

    asyncio.run(main())


def test_interactive_registration_expires_and_is_superseded() -> None:
    clock = FakeClock()
    state = make_state(clock=clock)

    async def main() -> None:
        old = state.begin_registration(mk(1), nk(1))
        new = state.begin_registration(mk(1), nk(1))
        assert old.id != new.id
        with pytest.raises(RegistrationFailed, match="superseded"):
            await old.wait()
        clock.advance(minutes=15)
        assert state.get_registration(new.id) is None
        with pytest.raises(RegistrationFailed, match="expired"):
            await new.wait()

    asyncio.run(main())


# ---- persistence ------------------------------------------------------------------------


def test_state_survives_reopen(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "db.sqlite"
    s1 = make_state(path, clock)
    u = s1.create_user("alice")
    key = s1.create_preauth_key(u.id)
    n = s1.register_with_preauth_key(key.secret, mk(1), nk(1), {"Hostname": "a"})
    n = s1.update_node(n.id, endpoints=["192.0.2.1:1"], disco_key=DiscoPublic(b"d" * 32))
    api = s1.create_api_key()
    s1.close()
    s2 = make_state(path, clock, seed=2)
    assert s2.get_node(n.id) == n
    assert s2.get_node_by_node_key(nk(1)) == n
    with pytest.raises(PreAuthKeyError, match="already used"):
        s2.register_with_preauth_key(key.secret, mk(2), nk(2))
    s2.verify_api_key(api.secret)
    # The allocator learned the used addresses: the next node gets the next one.
    m = s2.register_node(mk(2), nk(2), u.id)
    assert m.ipv4 == ipaddress.IPv4Address("100.64.0.2")


def test_touch_updates_last_seen_without_events(state: State, clock: FakeClock) -> None:
    u = state.create_user("alice")
    n = state.register_node(mk(1), nk(1), u.id)
    sub = state.subscribe()
    clock.advance(seconds=30)
    state.touch(n.id)
    state.touch(NodeID(999))  # unknown: ignored
    assert state.get_node(n.id).last_seen == T0 + timedelta(seconds=30)
    assert sub.drain() == []
    assert state.store.load().nodes[0].last_seen == T0  # not persisted yet
    state.set_online(n.id, True)
    state.set_online(n.id, False)
    assert state.store.load().nodes[0].last_seen == T0 + timedelta(seconds=30)


def test_deleting_keys_clears_node_references_in_memory_and_db(state: State) -> None:
    alice, bob = state.create_user("alice"), state.create_user("bob")
    secret = state.create_preauth_key(alice.id).secret
    n = state.register_with_preauth_key(secret, mk(1), nk(1))
    assert n.auth_key_id is not None
    state.move_node(n.id, bob.id)
    state.delete_user(alice.id)  # its key goes, the node (now bob's) stays
    assert state.get_node(n.id).auth_key_id is None
    assert state.store.load().nodes[0].auth_key_id is None


def test_cancelled_registration_fails_the_waiter(state: State) -> None:
    async def main() -> None:
        reg = state.begin_registration(mk(1), nk(1), {"Hostname": "x"})
        assert [r.id for r in state.list_registrations()] == [reg.id]
        state.cancel_registration(reg.id)
        with pytest.raises(RegistrationFailed, match="rejected"):
            await reg.wait()
        with pytest.raises(NotFound):
            state.cancel_registration(reg.id)
        assert state.list_registrations() == []

    asyncio.run(main())


def test_hostinfo_is_bounded(state: State) -> None:
    u = state.create_user("alice")
    with pytest.raises(InvalidArgument, match="too large"):
        state.register_node(mk(1), nk(1), u.id, {"Hostname": "x" * 70000})
    with pytest.raises(InvalidArgument, match="not JSON"):
        state.begin_registration(mk(1), nk(1), {"Hostname": object()})
    assert state.list_nodes() == []


def test_client_caused_failures_do_not_reload_the_snapshot(state: State) -> None:
    """A bad auth key costs a lookup, not a reload of every table (a cheap DoS otherwise);
    a failure after a database write still reloads, keeping memory equal to the DB."""
    u = state.create_user("alice")
    secret = state.create_preauth_key(u.id).secret
    state.register_node(mk(1), nk(1), u.id)
    loads = 0
    real_load = state.store.inner.load

    def counting_load() -> Snapshot:
        nonlocal loads
        loads += 1
        return real_load()

    state.store.inner.load = counting_load  # type: ignore[method-assign]  # a spy
    for i in range(50):
        with pytest.raises(PreAuthKeyError):
            state.register_with_preauth_key(secret[:-4] + f"{i:04d}", mk(2), nk(2))
    with pytest.raises(Conflict):
        state.create_user("alice")
    assert loads == 0
    # The key is consumed, then the node write is refused (node key of another machine):
    # the consume rolls back and memory is reloaded to match.
    with pytest.raises(Conflict):
        state.register_with_preauth_key(secret, mk(3), nk(1))
    assert loads == 1
    assert not state.validate_preauth_key(secret).used
    assert state.store.load().preauth_keys[0].used is False


def test_pending_registrations_are_bounded(state: State, clock: FakeClock) -> None:
    """Issue #12 finding 3: a full table evicts its oldest entries (a flood cannot lock a
    real user out), and one source holds at most MAX_PENDING_PER_SOURCE."""
    from meshscale.control.models import RegistrationFailed
    from meshscale.control.state import MAX_PENDING_REGISTRATIONS
    from meshscale.control.state.registrations import MAX_PENDING_PER_SOURCE

    first = [state.begin_registration(mk(i), nk(i), source="203.0.113.9") for i in range(40)]
    mine = state.list_registrations()
    assert len(mine) == MAX_PENDING_PER_SOURCE
    assert {r.id for r in mine} == {r.id for r in first[-MAX_PENDING_PER_SOURCE:]}
    with pytest.raises(RegistrationFailed, match="too many from this address"):
        asyncio.run(asyncio.wait_for(first[0].wait(), 1))
    for i in range(MAX_PENDING_REGISTRATIONS):
        state.begin_registration(mk(100 + i), nk(100 + i), source=f"src{i}")
    assert len(state.list_registrations()) == MAX_PENDING_REGISTRATIONS
    real = state.begin_registration(mk(60000), nk(60000), source="198.51.100.1")
    regs = state.list_registrations()
    assert len(regs) == MAX_PENDING_REGISTRATIONS
    assert real.id in {r.id for r in regs}
    assert first[-1].id not in {r.id for r in regs}  # the oldest went first
    state.begin_registration(mk(5), nk(5))  # a machine may restart its own login
    clock.advance(minutes=15)  # they expire, and room comes back
    state.begin_registration(mk(60001), nk(60001))
    assert len(state.list_registrations()) == 1


def test_restart_after_admin_move_keeps_the_move(state: State, clock: FakeClock) -> None:
    alice, bob = state.create_user("alice"), state.create_user("bob")
    secret = state.create_preauth_key(alice.id).secret
    n = state.register_with_preauth_key(secret, mk(1), nk(1))
    state.move_node(n.id, bob.id)
    clock.advance(hours=2)  # the key has expired meanwhile
    again = state.register_with_preauth_key(secret, mk(1), nk(1))
    assert again.user_id == bob.id
    # An expired node must present a valid key again.
    state.expire_node(n.id)
    with pytest.raises(PreAuthKeyError, match="expired"):
        state.register_with_preauth_key(secret, mk(1), nk(1))


def test_gc_announces_keys_that_expire(state: State, clock: FakeClock) -> None:
    u = state.create_user("alice")
    a = state.register_node(mk(1), nk(1), u.id)
    b = state.register_node(mk(2), nk(2), u.id)
    state.expire_node(a.id, at=T0 + timedelta(minutes=5))
    state.expire_node(b.id, at=T0 - timedelta(minutes=1))  # already expired: no news
    sub = state.subscribe()
    assert state.gc().expired_nodes == ()  # the first call only sets the mark
    clock.advance(minutes=4)
    assert state.gc().expired_nodes == ()
    clock.advance(minutes=1)
    assert state.gc().expired_nodes == (a.id,)
    clock.advance(minutes=1)
    assert state.gc().expired_nodes == ()  # announced once
    assert sub.drain() == [NodeChanged(a.id, frozenset({"expiry"}))]


@pytest.mark.slow
@given(st.text(max_size=120))
def test_key_parsing_only_raises_key_errors(text: str) -> None:
    state = make_state()
    u = state.create_user("alice")
    good = state.create_preauth_key(u.id).secret
    for candidate in (text, good[:11] + text, good[:24] + text):
        with pytest.raises(PreAuthKeyError):
            state.validate_preauth_key(candidate)
        with pytest.raises(APIKeyError):
            state.verify_api_key(candidate.replace("hskey-auth-", "hskey-api-"))
    state.close()
