"""Admin console benchmark: server time of the machines page at N nodes (issue #17).

Builds a State (SQLite in memory) with N nodes over N/10 users, a tenth of them tagged and
a twentieth announcing a subnet route, signs one console session in, then times
``Console.handle`` (the whole server side: session, search/filter/sort, paging, Jinja2
render, security headers) for:

* page 1 (50 rows), unfiltered;
* a search (``q=u7``) and a filter (``filter=routes-pending``);
* the last page, sorted by last seen;
* the baseline in the same run: ``GET /api/v1/node`` (every node serialized, no paging).

    .venv/bin/python benchmarks/bench_console.py                  # N = 1000, 10000
    .venv/bin/python benchmarks/bench_console.py --sizes 1000 --rounds 20

Not a test: run by hand and copy the figures. Goal: <= 200 ms server time at 10,000.

Figures of 2026-12-02 (2 shared cores, load ~10 from other work; p50 / p99, first request):

    N       page 1        search q=u7          filter routes-pending   last page    baseline
    1000    15 / 161 ms   20 / 41 ms (54)      22 / 40 ms (27)         21 / 39 ms   251 ms
    10000   30 / 49 ms    65 / 113 ms (559)    60 / 76 ms (406)        46 / 70 ms   2193 ms
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import re
import statistics
import time
from urllib.parse import parse_qsl, urlencode, urlsplit

from meshscale.control.api import API
from meshscale.control.console import Console, ConsoleSettings, build
from meshscale.control.state import State
from meshscale.io.http import Headers, Request
from meshscale.key import MachinePrivate, NodePrivate


def tailnet(n: int) -> State:
    state = State.open(":memory:")
    users = [state.create_user(f"u{u}").id for u in range(max(1, n // 10))]
    for i in range(n):
        seed = hashlib.sha256(i.to_bytes(4, "big")).digest()
        routes = [f"10.{i // 256 % 256}.{i % 256}.0/24"] if i % 20 == 0 else []
        hostinfo = {"Hostname": f"host{i}", "OS": ("linux", "windows", "macOS")[i % 3],
                    "IPNVersion": "1.96.4", "RoutableIPs": routes}  # fmt: skip
        state.register_node(
            MachinePrivate.generate(seed).public(), NodePrivate.generate(seed[::-1]).public(),
            users[i % len(users)], hostinfo, tags=["tag:server"] if i % 10 == 0 else (),
        )  # fmt: skip
    return state


def request(console: Console, cookie: str, target: str) -> tuple[int, float, bytes]:
    parts = urlsplit(target)
    req = Request("GET", parts.path, parts.query, dict(parse_qsl(parts.query)),
                  Headers([("host", "control.test"), ("cookie", cookie)]))  # fmt: skip
    t0 = time.perf_counter()
    resp = asyncio.run(console.handle(req))
    dt = time.perf_counter() - t0
    assert isinstance(resp.body, bytes)
    return resp.status, dt * 1000, resp.body


def api_list(api: API, token: str) -> float:
    req = Request("GET", "/api/v1/node", "", {}, Headers([("authorization", f"Bearer {token}")]))
    t0 = time.perf_counter()
    resp = asyncio.run(api.handle(req))
    assert resp.status == 200
    return (time.perf_counter() - t0) * 1000


def run(n: int, rounds: int) -> None:
    t0 = time.perf_counter()
    state = tailnet(n)
    build_s = time.perf_counter() - t0
    api = API(state)
    console = build(state, api, ConsoleSettings(server_url="https://control.test"))
    sess = console.sessions.create("apikey:bench")
    cookie = f"{console.cookie}={sess.id}"
    last = -(-n // 50)
    cases = {
        "page 1": "/admin/machines",
        "search q=u7": "/admin/machines?" + urlencode({"q": "u7"}),
        "filter routes-pending": "/admin/machines?filter=routes-pending",
        "last page, by last seen": f"/admin/machines?sort=last-seen&page={last}",
    }
    print(f"N={n}: tailnet built in {build_s:.1f} s")
    for name, target in cases.items():
        first = request(console, cookie, target)[1]  # cold: builds the search index
        times = []
        for _ in range(rounds):
            status, ms, body = request(console, cookie, target)
            assert status == 200, (status, body[:200])
            times.append(ms)
        rows = len(re.findall(rb'<tr class="machine"', body))
        times.sort()
        p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
        print(f"  {name:26s} p50 {statistics.median(times):7.1f} ms  p99 {p99:7.1f} ms  "
              f"first {first:7.1f} ms  rows {rows}")  # fmt: skip
    token = state.create_api_key().secret
    base = sorted(api_list(api, token) for _ in range(max(3, rounds // 4)))
    print(f"  baseline GET /api/v1/node  p50 {statistics.median(base):7.1f} ms  (all {n} nodes)")
    state.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    p.add_argument("--rounds", type=int, default=30)
    args = p.parse_args()
    for n in args.sizes:
        run(n, args.rounds)


if __name__ == "__main__":
    main()
