"""Policy benchmark: compile time and change → affected nodes, at N nodes with 100 rules.

Builds a tailnet of N nodes (N/10 users, 20 groups, 20 tags; a tenth of the nodes tagged)
and a policy of 100 rules (group → tag:ports, tag → tag, user → group, member → self,
`*` → tag). Reports, per N:

* compile: ``set_policy`` on the full tailnet, then every node's filter built once;
* tag change: ``update_node`` of one node gaining a tag (p50/p99 over K changes), the
  number of nodes it names, and the time to rebuild just their filters;
* policy change: one user added to one group (``set_policy``), nodes named, and
  rebuilding their filters;
* the baseline: a full recompute (fresh engine + every filter), so figures are ratios in
  one run; and peak RSS of this process.

    .venv/bin/python benchmarks/bench_policy.py                  # N = 1000, 10000
    .venv/bin/python benchmarks/bench_policy.py --sizes 1000 --changes 20

Not a test: run by hand and copy the figures.

Figures of 2026-12-02 (2 shared cores, load ~3 from other work; --changes 20):

    N       compile   all filters   tag change -> filters p50/p99   named   policy change (+filters)
    1000     99 ms       197 ms           1.1 / 17.6 ms              9       203 ms, 110 nodes
    10000   951 ms      2367 ms           1.5 /  7.2 ms              9      1343 ms, 561 nodes

Full recompute / incremental tag change: 268x at 1000, 2184x at 10000. Peak RSS of the whole
process (engine + tailnet records): 48 MiB at 1000, 225 MiB at 10000. A policy swap at 10000
varied 0.85-1.4 s between runs (it compiles everything, then diffs per-node signatures).

2026-12-03 (load ~7), the swap derived from the compiled policy in force (policy/incremental.py):
set_policy 44 ms at 1000 (baseline full recompile 163 ms, 3.7x), 240 ms at 10000 (baseline
2.81 s, 11.7x); both name the same nodes (110, 561).
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import json
import resource
import statistics
import time
from collections.abc import Callable

from meshscale.control.models import Node, NodeID, User, UserID
from meshscale.key import MachinePublic, NodePublic
from meshscale.policy import PolicyEngine


def tailnet(n: int) -> tuple[list[User], list[Node]]:
    users = [
        User(UserID(u + 1), f"u{u}", email=f"u{u}@example.com") for u in range(max(1, n // 10))
    ]
    nodes = []
    for i in range(n):
        tags = (f"tag:t{i % 20}",) if i % 10 == 0 else ()
        v4 = ipaddress.IPv4Address(int(ipaddress.IPv4Address("100.64.0.1")) + i)
        v6 = ipaddress.IPv6Address(int(ipaddress.IPv6Address("fd7a:115c:a1e0::1")) + i)
        key = i.to_bytes(4, "big") * 8
        nodes.append(
            Node(
                NodeID(i + 1),
                MachinePublic(key),
                NodePublic(key),
                users[i % len(users)].id,
                f"n{i}",
                f"n{i}",
                ipv4=v4,
                ipv6=v6,
                tags=tags,
            )
        )
    return users, nodes


def policy(users: list[User], extra: str | None = None) -> str:
    groups = {f"group:g{g}": [f"{u.name}@" for u in users[g::20]] for g in range(20)}
    if extra:
        groups["group:g0"].append(extra)
    tags = {f"tag:t{t}": ["group:g0"] for t in range(20)}
    acls = []
    for r in range(100):
        kind = r % 5
        if kind == 0:
            src, dst = [f"group:g{r % 20}"], [f"tag:t{r % 20}:{5000 + r},{6000 + r}-{6010 + r}"]
        elif kind == 1:
            src, dst = [f"tag:t{r % 20}"], [f"tag:t{(r + 1) % 20}:{r + 1}"]
        elif kind == 2:
            src, dst = [f"{users[r % len(users)].name}@"], [f"group:g{(r + 3) % 20}:443"]
        elif kind == 3:
            src, dst = ["autogroup:member"], [f"autogroup:self:{22 + r}"]
        else:
            src, dst = ["*"], [f"tag:t{r % 20}:80"]
        acls.append({"action": "accept", "src": src, "dst": dst})
    return json.dumps({"groups": groups, "tagOwners": tags, "acls": acls})


def ms(s: float) -> str:
    return f"{s * 1000:8.1f} ms"


def run(n: int, changes: int) -> None:
    users, nodes = tailnet(n)
    text = policy(users)
    t0 = time.perf_counter()
    e = PolicyEngine()
    e.set_users(users)
    e.set_nodes(nodes)
    e.set_policy(text)
    t1 = time.perf_counter()
    for node in nodes:
        e.filter_for(node)
    t2 = time.perf_counter()
    full = t2 - t0
    print(f"N={n}: compile {ms(t1 - t0)}, all filters {ms(t2 - t1)} (full recompute {ms(full)})")

    lat, sizes, rebuild = [], [], []
    for k in range(changes):
        target = nodes[(k * 7919 + 1) % n]
        new = dataclasses.replace(target, tags=(*target.tags, f"tag:t{k % 20}"))
        t0 = time.perf_counter()
        change = e.update_node(new)
        t1 = time.perf_counter()
        for nid in change.nodes:
            e.filter_for(nodes[nid - 1])
        t2 = time.perf_counter()
        lat.append(t1 - t0)
        rebuild.append(t2 - t0)
        sizes.append(len(change.nodes))
        nodes[target.id - 1] = new
    q = statistics.quantiles(rebuild, n=100) if len(rebuild) > 1 else rebuild * 99
    print(f"  tag change: update p50 {ms(statistics.median(lat))}, +filters p50 "
          f"{ms(statistics.median(rebuild))} p99 {ms(q[98])}; nodes named p50 "
          f"{statistics.median(sizes):.0f} max {max(sizes)}; full/incremental "
          f"{full / statistics.median(rebuild):.0f}x")  # fmt: skip

    t0 = time.perf_counter()
    change = e.set_policy(policy(users, extra=f"{users[-1].name}@"))
    t1 = time.perf_counter()
    named = len(nodes) if change.everyone else len(change.nodes)
    for node in nodes if change.everyone else (nodes[i - 1] for i in change.nodes):
        e.filter_for(node)
    t2 = time.perf_counter()
    print(f"  policy change (one user into one group): set_policy {ms(t1 - t0)}, "
          f"nodes named {named}, +their filters {ms(t2 - t0)}")  # fmt: skip
    # The baseline: the same change (back out, then in again) with set_policy recompiling
    # everything and diffing per-node signatures, as before policy/incremental.py.
    swap = t1 - t0
    e.set_policy(text)
    e._derive = lambda p, strict=True: (  # type: ignore[method-assign]
        e._compile(p, e._compiled.nodes.values(), strict),
        None,
    )
    t0 = time.perf_counter()
    change = e.set_policy(policy(users, extra=f"{users[-1].name}@"))
    full = time.perf_counter() - t0
    print(f"  baseline (full recompile): set_policy {ms(full)}, nodes named "
          f"{len(nodes) if change.everyone else len(change.nodes)}; full/derived "
          f"{full / swap:.1f}x")  # fmt: skip
    print_peak_rss()


def print_peak_rss() -> None:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"  peak RSS {rss:.0f} MiB")


def cli(run: Callable[[int, int], None]) -> None:
    """``--sizes N...`` and ``--changes K``, then ``run(N, K)`` per size (also bench_policy_map)."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--changes", type=int, default=20)
    args = ap.parse_args()
    for n in args.sizes:
        run(n, args.changes)


def main() -> None:
    cli(run)


if __name__ == "__main__":
    main()
