"""MagicDNS benchmark (#10): quad-100's resolver + forwarding driver, in one process.

* local: A queries for tailnet names answered from the host table (netmap of N peers),
  through ``Forwarder.query`` (wire parse, lookup, answer build) — queries/s, p50/p99;
* forwarded: unique names sent to a real upstream (dnsmasq on the loopback, UDP), C queries
  in flight — queries/s, p50/p99;
* cached: a Zipf-ish mix over 1,000 outside names after warm-up — hit rate, p50/p99;
* 10,000 random names that the upstream does not answer at all: all answered (SERVFAIL)
  within the budget, none lost, nothing hangs;
* RSS of the process with N = 10,000 names in the table and the cache full.

    .venv/bin/python benchmarks/bench_dns.py            # needs dnsmasq (scripts/install)
    .venv/bin/python benchmarks/bench_dns.py --peers 10000 --queries 20000

Not a test: run by hand and copy the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import resource
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import dns.message

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from meshscale.dns.cache import AnswerCache
from meshscale.dns.config import from_netmap
from meshscale.dns.resolver import Resolver
from meshscale.node.magicdns.forward import Forwarder
from meshscale.tailcfg.dns import DNSConfig
from meshscale.tailcfg.dns import Resolver as Up
from meshscale.tailcfg.node import Node


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))] * 1e3


def forwarder(peers: int, upstream: str, **kw: float) -> Forwarder:
    nodes = [
        Node(
            Name=f"n{i}.tn.example.",
            Addresses=[f"100.{64 + i // 65536}.{i // 256 % 256}.{i % 256}/32"],
        )
        for i in range(1, peers + 1)
    ]
    cfg = DNSConfig(Resolvers=[Up(Addr=upstream)], Proxied=True, Domains=["tn.example"])
    res = Resolver(from_netmap(cfg, nodes[0], nodes[1:]), AnswerCache(clock=time.monotonic))
    return Forwarder(res, **kw)  # type: ignore[arg-type]


async def run_batch(f: Forwarder, names: list[str], concurrency: int) -> tuple[float, list[float]]:
    lat: list[float] = []
    sem = asyncio.Semaphore(concurrency)

    async def one(name: str) -> None:
        async with sem:
            t = time.perf_counter()
            await f.query(dns.message.make_query(name, "A").to_wire())
            lat.append(time.perf_counter() - t)

    t0 = time.perf_counter()
    await asyncio.gather(*(one(n) for n in names))
    return time.perf_counter() - t0, lat


def start_dnsmasq(port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            "dnsmasq",
            "--no-daemon",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            "--listen-address=127.0.0.1",
            f"--port={port}",
            "--user=root",
            "--pid-file=",
            "--cache-size=10000",
            "--local-ttl=300",
            "--address=/outside.test/192.0.2.1",
            "--dns-forward-max=1000",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def main(args: argparse.Namespace, port: int) -> None:
    await asyncio.sleep(0.3)
    f = forwarder(args.peers, f"127.0.0.1:{port}")
    rnd = random.Random(1)
    local = [f"n{rnd.randint(1, args.peers)}.tn.example" for _ in range(args.queries)]
    took, lat = await run_batch(f, local, 1)
    print(
        f"local      {len(local) / took:8.0f} q/s  p50 {pct(lat, 0.5):.3f} ms  "
        f"p99 {pct(lat, 0.99):.3f} ms"
    )
    fwd = [f"u{i}.outside.test" for i in range(args.queries // 4)]
    took, lat = await run_batch(f, fwd, args.concurrency)
    c = args.concurrency
    print(
        f"forwarded  {len(fwd) / took:8.0f} q/s  p50 {pct(lat, 0.5):.3f} ms  "
        f"p99 {pct(lat, 0.99):.3f} ms  (c={c}, dnsmasq on loopback)"
    )
    f.resolver.cache.hits = f.resolver.cache.misses = 0
    pool = [f"c{i}.outside.test" for i in range(1000)]
    mix = [pool[min(999, int(rnd.paretovariate(1.2)) - 1)] for _ in range(args.queries)]
    took, lat = await run_batch(f, mix, args.concurrency)
    cache = f.resolver.cache
    rate = cache.hits / max(1, cache.hits + cache.misses)
    print(
        f"cached mix {len(mix) / took:8.0f} q/s  p50 {pct(lat, 0.5):.3f} ms  "
        f"p99 {pct(lat, 0.99):.3f} ms  hit rate {rate:.1%}"
    )
    # An upstream that never answers: a bound socket nobody reads.
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    silent = forwarder(
        10,
        f"127.0.0.1:{sink.getsockname()[1]}",
        udp_timeout=0.2,
        udp_retry=0.1,
        tcp_timeout=0.2,
        budget=0.4,
    )
    names = [f"{rnd.getrandbits(48):x}.nowhere.test" for _ in range(10_000)]
    took, lat = await run_batch(silent, names, 256)
    st = silent.stats
    print(
        f"silent upstream: {len(lat)} of {len(names)} answered in {took:.1f} s, "
        f"SERVFAIL {st.get('rcode_SERVFAIL', 0)}, max {max(lat):.2f} s, in flight after "
        f"{silent.inflight}"
    )
    sink.close()
    big = forwarder(10_000, "127.0.0.1:9")
    for i in range(big.resolver.cache._max):
        big.resolver.cache.put((f"x{i}.test.", 1, 1), b"\x00" * 80, 600)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"peak RSS with 10,000 names and a full cache ({len(big.resolver.cache)} entries): "
        f"{rss:.0f} MiB"
    )


if __name__ == "__main__":
    if shutil.which("dnsmasq") is None:
        sys.exit("bench_dns: dnsmasq not installed (scripts/install)")
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--peers", type=int, default=10_000)
    p.add_argument("--queries", type=int, default=20_000)
    p.add_argument("--concurrency", type=int, default=64)
    port = free_port()
    proc = start_dnsmasq(port)
    try:
        asyncio.run(main(p.parse_args(), port))
    finally:
        proc.terminate()
        proc.wait(5)
