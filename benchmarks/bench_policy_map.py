"""Policy change → map messages, end to end in the control server (no network).

State (SQLite in memory) with the real PolicyEngine, the map Batcher over it, and one
MapSession per node (its first full map taken as sent). For N nodes with the 100-rule
policy of bench_policy.py, reports:

* tag change: ``nodes tag`` on one node (State.set_tags: store write + engine update), its
  events through Batcher.handle, and a message built for every session with something
  pending (full maps for the nodes whose answers moved, per-viewer deltas for the rest):
  p50/p99 over K changes of the whole path, and how many full maps / deltas it took;
* policy change: one user added to one group, then removed again (State.set_policy), to
  every message built: p50/p99 over K changes, and the set_policy part; then the same
  with set_policy recompiling everything and diffing per-node signatures (the path before
  policy/incremental.py), as the baseline in the same run;
* compile: the policy resolved over all N nodes from scratch, then every filter built;
* the time spent in the garbage collector (the tailnet is frozen out of it once built, as
  meshscale-control does once started; ``--no-gc-freeze`` to compare);
* peak RSS of the process.

The peer JSON cache is warmed first (every node encoded once), as in a running server.

    .venv/bin/python benchmarks/bench_policy_map.py                  # N = 1000, 10000
    .venv/bin/python benchmarks/bench_policy_map.py --sizes 1000 --changes 10

Not a test: run by hand and copy the figures into the README.
"""

from __future__ import annotations

import gc
import os
import statistics
import sys
import time
from datetime import UTC, datetime

sys.path.insert(0, os.path.dirname(__file__))

from bench_policy import cli, policy, print_peak_rss

from meshscale.control.mapper import mapper
from meshscale.control.mapper.batcher import Batcher, MapSession, Pending, SnapshotSource
from meshscale.control.state import State
from meshscale.key import MachinePublic, NodePublic
from meshscale.policy import PolicyEngine
from meshscale.policy.compile import Compiled
from meshscale.testing.mapsource import DERP

CFG = mapper.MapConfig(base_domain="ts.example", domain="control.example", derp_map=DERP)
NOW = datetime(2026, 12, 2, tzinfo=UTC)


def build_all(state: State, b: Batcher, sessions: list[MapSession]) -> tuple[int, int]:
    """Feed published events to the batcher; build every pending message."""
    for ev in sub.drain():
        b.handle(ev)
    fulls, deltas = b.full_maps_built, b.deltas_built
    for s in sessions:
        if not s.pending.empty() or s.bpos < b._epoch_base + len(b._epochs):
            b.build(s, NOW)
    return b.full_maps_built - fulls, b.deltas_built - deltas


FREEZE = "--no-gc-freeze" not in sys.argv
if not FREEZE:
    sys.argv.remove("--no-gc-freeze")
gc_time = [0.0]  # seconds spent in the cyclic garbage collector (gc.callbacks)
_gc_start = [0.0]


gc_gens = [0.0, 0.0, 0.0]


def _gc_watch(phase: str, info: dict[str, int]) -> None:
    if phase == "start":
        _gc_start[0] = time.perf_counter()
    else:
        d = time.perf_counter() - _gc_start[0]
        gc_time[0] += d
        gc_gens[info["generation"]] += d


gc.callbacks.append(_gc_watch)


def ms(s: float) -> str:
    return f"{s * 1000:.1f} ms"


def run(n: int, changes: int) -> None:
    global sub
    t0 = time.perf_counter()
    state = State.open(":memory:", policy=PolicyEngine())
    users = [state.create_user(f"u{u}", email=f"u{u}@example.com") for u in range(max(1, n // 10))]
    state.set_policy(policy(users))
    for i in range(n):
        key = (i + 1).to_bytes(4, "big") * 8
        node = state.register_node(MachinePublic(key), NodePublic(key), users[i % len(users)].id,
                                   {"Hostname": f"n{i}"})  # fmt: skip
        if i % 10 == 0:
            state.set_tags(node.id, [f"tag:t{i % 20}"])
    sub = state.subscribe(max_queue=1 << 20)
    b = Batcher(SnapshotSource(state), lambda: CFG)
    sessions = []
    for node in state.list_nodes():
        s = MapSession(node.id)
        b.add(s)
        s.pending, s.started = Pending(full=False), True  # its full map went out
        sessions.append(s)
    for node in state.list_nodes():  # a running server's peer JSON cache is warm
        b.cache.peer(node, CFG, NOW)
    print(f"N={n}: tailnet built in {time.perf_counter() - t0:.1f} s")
    if FREEZE:  # as meshscale-control does once started (control/main.py)
        gc.collect()
        gc.freeze()

    nodes = state.list_nodes()
    lat, shape = [], []
    for k in range(changes):
        target = nodes[(k * 7919 + 1) % n]
        t0 = time.perf_counter()
        state.set_tags(target.id, [*target.tags, f"tag:t{(k + 3) % 20}"])
        fulls, deltas = build_all(state, b, sessions)
        lat.append(time.perf_counter() - t0)
        shape.append((fulls, deltas))
        nodes = state.list_nodes()
    q = statistics.quantiles(lat, n=100) if len(lat) > 1 else lat * 99
    fulls = statistics.median(f for f, _ in shape)
    print(
        f"  tag change -> all messages: p50 {ms(statistics.median(lat))} p99 {ms(q[98])}; "
        f"full maps p50 {fulls:.0f}, deltas p50 {statistics.median(d for _, d in shape):.0f}"
    )

    engine = state.core.policy
    assert isinstance(engine, PolicyEngine)
    for mode in ("derived", "full recompile"):
        if mode != "derived":  # the baseline: set_policy as before policy/incremental.py
            engine._derive = lambda p, strict=True: (  # type: ignore[method-assign]
                engine._compile(p, engine._compiled.nodes.values(), strict),
                None,
            )
        lat, setp, shape = [], [], []
        gc_time[0] = 0.0
        gc_gens[:] = [0.0, 0.0, 0.0]
        for k in range(changes):  # a user into group:g0, then out again (each a swap)
            extra = f"{users[-1 - k // 2].name}@" if k % 2 == 0 else None
            t0 = time.perf_counter()
            state.set_policy(policy(users, extra=extra))
            t1 = time.perf_counter()
            shape.append(build_all(state, b, sessions))
            lat.append(time.perf_counter() - t0)
            setp.append(t1 - t0)
        q = statistics.quantiles(lat, n=100) if len(lat) > 1 else lat * 99
        print(
            f"  policy change ({mode}; one user into / out of one group) -> all messages: "
            f"p50 {ms(statistics.median(lat))} p99 {ms(q[98])}; set_policy p50 "
            f"{ms(statistics.median(setp))} max {ms(max(setp))}; full maps p50 "
            f"{statistics.median(f for f, _ in shape):.0f}, deltas p50 "
            f"{statistics.median(d for _, d in shape):.0f}; GC pauses {ms(gc_time[0])} in all "
            f"(by generation {' / '.join(ms(g).strip() for g in gc_gens)}); "
            "each: " + " ".join(f"{x * 1000:.0f}" for x in lat)
        )
    t0 = time.perf_counter()
    fresh = Compiled(engine.policy, engine._users, engine._compiled.nodes.values())
    t1 = time.perf_counter()
    for nid in fresh.nodes:
        fresh.filter_for(nid, copy=False)
    print(f"  compile {ms(t1 - t0)}, then every filter {ms(time.perf_counter() - t1)}")
    del fresh
    print_peak_rss()
    state.close()
    gc.unfreeze()


def main() -> None:
    cli(run)


if __name__ == "__main__":
    main()
