"""Several tailnets (issue #16): what hosting T tailnets costs a node's map, in one run.

Builds, in memory with the real PolicyEngine, a baseline of ONE tailnet of N nodes and then
T tailnets of N nodes each (same users per tailnet, the same policy in each), and reports:

* peers_of + packet_filter per node (the map's inputs), mean over every node of tailnet 1,
  in both worlds: the ratio is the cost of the other tailnets on one tailnet's maps;
* set_policy of one tailnet: only its engine compiles, so it should not grow with T;
* registration of one more node in tailnet 1;
* ``--batcher``: full maps and one delta fan-out for N sessions of one tailnet, through the
  batcher with and without its tailnet hooks (base_domain_of, shared_domains_of).

    .venv/bin/python benchmarks/bench_tailnets.py              # N = 200, T = 10
    .venv/bin/python benchmarks/bench_tailnets.py --nodes 500 --tailnets 20

Not a test: run by hand and copy the figures (with ``uptime``) into README.

Figures of 2026-12-03 (2 shared cores, load 7.5 from other helpers; --reps 40, N = 200):

    T=  1: map inputs 39.7 us/node   set_policy(tailnet 1) 2.6 ms   register 0.28 ms
    T= 10: map inputs 44.6 us/node   set_policy(tailnet 1) 2.7 ms   register 0.27 ms
    ratio T=10 / T=1: map inputs 1.12x, set_policy 1.04x, register 0.98x

At --reps 7 the map-input ratio ranged 0.5-2.0x between runs on this loaded machine: the
per-node work is the same (one engine per tailnet), so that spread is noise.

--batcher 1000 (load 4.6): hooks / plain 0.95-0.96x for full maps, 0.71-0.96x for a delta
fan-out (1.0-1.5 ms for 1000 sessions). A first version that took State's lock in
base_domain_of on every build measured 4.8x on the delta fan-out; it now returns at once
while no tailnet has a base domain of its own.
"""

from __future__ import annotations

import argparse
import os
import random
import time
from collections.abc import Callable

from meshscale.control.models import DEFAULT_TAILNET, TailnetID, UserID
from meshscale.control.state import State
from meshscale.key import MachinePublic, NodePublic
from meshscale.policy import PolicyEngine

POLICY = """{"groups": {"group:a": ["u0@", "u1@"]},
 "acls": [{"action": "accept", "src": ["group:a"], "dst": ["*:22"]},
          {"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:self:*"]}]}"""


def build(tailnets: int, nodes: int) -> State:
    rng = random.Random(7)
    st = State.open(":memory:", rand=rng.randbytes, randbelow=rng.randrange,
                    policy=PolicyEngine())  # fmt: skip
    k = 0
    for t in range(tailnets):
        tid = DEFAULT_TAILNET if t == 0 else st.create_tailnet(f"t{t}").id
        users = [st.create_user(f"u{i}", tailnet=tid).id for i in range(max(1, nodes // 10))]
        for i in range(nodes):
            k += 1
            st.register_node(MachinePublic(k.to_bytes(32, "big")),
                             NodePublic((k + 10**9).to_bytes(32, "big")),
                             users[i % len(users)], {"Hostname": f"n{i}"})  # fmt: skip
        st.set_policy(POLICY, tailnet=tid)
    return st


def map_inputs(st: State) -> float:
    """Mean seconds of peers_of + packet_filter over tailnet 1's nodes."""
    ids = [n.id for n in st.list_nodes(tailnet=DEFAULT_TAILNET)]
    t0 = time.perf_counter()
    for nid in ids:
        st.peers_of(nid)
        st.packet_filter(nid)
    return (time.perf_counter() - t0) / len(ids)


def best(fn: Callable[[int], object], reps: int) -> float:
    """The fastest of ``reps`` calls of ``fn(i)`` (the least disturbed by other load)."""
    out = []
    for i in range(reps):
        t0 = time.perf_counter()
        fn(i)
        out.append(time.perf_counter() - t0)
    return min(out)


def batcher_hooks(n: int) -> None:
    """Full maps and a delta fan-out for ``n`` sessions, without and with the tailnet hooks
    of SnapshotSource (best of two rounds each, interleaved)."""
    from datetime import UTC, datetime

    from meshscale.control.mapper import mapper
    from meshscale.control.mapper.batcher import Batcher, MapSession, SnapshotSource
    from meshscale.testing.mapsource import DERP

    t0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    cfg = mapper.MapConfig(base_domain="ts.example", domain="c", derp_map=DERP,
                           dns_config=mapper.build_dns_config("ts.example"))  # fmt: skip
    st = build(1, n)

    class Plain(SnapshotSource):
        base_domain_of = None  # type: ignore[assignment]
        shared_domains_of = None  # type: ignore[assignment]

    def run(kind: type[SnapshotSource]) -> tuple[float, float]:
        sub = st.subscribe()
        b = Batcher(kind(st), lambda: cfg)
        sessions = [MapSession(x.id) for x in st.list_nodes()]
        for sess in sessions:
            b.add(sess)
        t = time.perf_counter()
        for sess in sessions:
            b.build(sess, t0)
        full = time.perf_counter() - t
        st.update_endpoints(sessions[0].node_id, [f"192.0.2.{len(sessions) % 250}:41641"])
        for ev in sub.drain():
            b.handle(ev)
        t = time.perf_counter()
        for sess in sessions:
            b.build(sess, t0)
        delta = time.perf_counter() - t
        sub.close()
        return full, delta

    got: dict[str, list[tuple[float, float]]] = {"plain": [], "hooks": []}
    for _ in range(2):
        got["plain"].append(run(Plain))
        got["hooks"].append(run(SnapshotSource))
    best = {k: (min(f for f, _ in v), min(d for _, d in v)) for k, v in got.items()}
    for k, (f, d) in best.items():
        print(f"batcher {k:5s}: {n} full maps {f * 1e3:7.1f} ms, delta fan-out {d * 1e3:6.1f} ms")
    print(f"ratio hooks / plain: full maps {best['hooks'][0] / best['plain'][0]:.2f}x, "
          f"delta {best['hooks'][1] / best['plain'][1]:.2f}x")  # fmt: skip
    st.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--nodes", type=int, default=200, help="nodes per tailnet")
    ap.add_argument("--tailnets", type=int, default=10)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--batcher", type=int, metavar="N", help="only the batcher hooks, N sessions")
    a = ap.parse_args()
    print(f"load average {os.getloadavg()[0]:.1f}; N = {a.nodes} nodes per tailnet")
    if a.batcher:
        batcher_hooks(a.batcher)
        return
    rows = []
    for t in (1, a.tailnets):
        st = build(t, a.nodes)
        map_inputs(st)  # warm the filters
        per_node = min(map_inputs(st) for _ in range(a.reps))
        pol = best(lambda i, st=st: st.set_policy(POLICY.replace("22", str(30 + i)),
                                                  tailnet=TailnetID(1)), a.reps)  # fmt: skip
        uid = st.list_users(DEFAULT_TAILNET)[0].id

        def register(i: int, st: State = st, uid: UserID = uid) -> None:
            st.register_node(MachinePublic(bytes([255, i]) * 16), NodePublic(bytes([254, i]) * 16),
                             uid, {"Hostname": "x"})  # fmt: skip

        reg = best(register, a.reps)
        rows.append((t, per_node, pol, reg))
        st.close()
    for t, per_node, pol, reg in rows:
        print(f"T={t:3d}: map inputs {per_node * 1e6:8.1f} us/node   set_policy(tailnet 1) "
              f"{pol * 1e3:7.1f} ms   register {reg * 1e3:6.2f} ms")  # fmt: skip
    (_, m1, p1, r1), (_, mt, pt, rt) = rows
    print(f"ratio T={a.tailnets} / T=1: map inputs {mt / m1:.2f}x, set_policy {pt / p1:.2f}x, "
          f"register {rt / r1:.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
