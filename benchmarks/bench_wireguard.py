"""Data-plane benchmark: meshscale-wireguard vs wireguard-go (Debian's, and upstream's when
built), same lab, same run.

Two public lab hosts joined through the lab bridge; a tunnel between them run by one
implementation at both ends. Rounds alternate (wireguard-go, upstream, meshscale, ...) so that
drift in the machine's load hits all alike. Per round: iperf3 TCP throughput A -> B and ping RTT
through the tunnel, plus CPU seconds per gigabyte (both daemons). Prints every figure, the
medians and the ratios. Then the idle RSS of meshscale-wireguard with 1,000 configured peers.

Upstream wireguard-go 0.0.20250522 (TUN TSO, UDP GSO/GRO) is built offline by the lab
machine's build-upstream-wireguard-go.sh into /tmp/wggo-modern/wireguard-go (or set
MESHSCALE_UPSTREAM_WIREGUARD_GO); without it the upstream rows are skipped.

    .venv/bin/python benchmarks/bench_wireguard.py [--rounds 3] [--seconds 10]
    .venv/bin/python benchmarks/bench_wireguard.py --rtt-only [--pings 200] [--trace]

--rtt-only skips iperf3 (RTT alone, rounds still alternating); --trace also times each stage
of a lone ping inside meshscale's two daemons (wgengine/trace.py) and prints the medians.

Not a test: run it by hand (as root) and copy the figures into the README.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import time
from pathlib import Path

from meshscale.lab import Lab
from meshscale.lab.wgpair import (
    WGEnd,
    connect,
    have_upstream_wireguard_go,
    start_end,
    wg_genkey,
)
from meshscale.wgengine.trace import ENV as TRACE_ENV


def iperf(lab: Lab, a: WGEnd, b: WGEnd, seconds: int, reverse: bool = False) -> tuple[float, int]:
    srv = b.host.spawn(["iperf3", "-s", "-1", "-B", b.tunnel_ip], log_name="iperf-s")
    try:
        time.sleep(0.3)
        argv = ["iperf3", "-c", b.tunnel_ip, "-t", str(seconds), "-J", "-O", "1"]
        res = a.host.run(argv + (["-R"] if reverse else []), timeout=seconds + 30, check=False)
        if res.returncode != 0:
            raise RuntimeError(res.stdout[-1500:] + res.stderr)
        end = json.loads(res.stdout)["end"]
        return float(end["sum_received"]["bits_per_second"]), int(
            end["sum_sent"].get("retransmits", 0)
        )
    finally:
        srv.stop()


def rtt_ms(a: WGEnd, b: WGEnd, count: int = 50) -> float:
    res = a.host.run(
        ["ping", "-c", str(count), "-i", "0.02", "-q", b.tunnel_ip], timeout=count * 0.1 + 30
    )
    m = re.search(r"= [\d.]+/([\d.]+)/", res.stdout)
    if not m:
        raise RuntimeError(res.stdout)
    return float(m.group(1))


def raw_rtt_ms(a: WGEnd, b: WGEnd, count: int = 50) -> float:
    res = a.host.run(["ping", "-c", str(count), "-i", "0.02", "-q", str(b.host.ip)], timeout=60)
    m = re.search(r"= [\d.]+/([\d.]+)/", res.stdout)
    return float(m.group(1)) if m else float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def one_round(lab: Lab, impl: str, seconds: int, pings: int = 50) -> dict[str, float]:
    a_host, b_host = lab.hosts["a"], lab.hosts["b"]
    a = start_end(a_host, impl, 1, log_dir=lab.workdir)
    b = start_end(b_host, impl, 2, log_dir=lab.workdir)
    try:
        connect(a, b)
        a.host.run(["ping", "-c", "2", "-W", "3", b.tunnel_ip], timeout=20)
        if not seconds:  # --rtt-only
            return {"gbps": 0.0, "retransmits": 0, "rtt_ms": rtt_ms(a, b, pings), "cpu_s_per_gb": 0}
        cpu0 = cpu_seconds(a.proc.pid) + cpu_seconds(b.proc.pid)
        bps, retr = iperf(lab, a, b, seconds)
        cpu = cpu_seconds(a.proc.pid) + cpu_seconds(b.proc.pid) - cpu0
        rtt = rtt_ms(a, b, pings)
        # CPU per gigabyte moved (both ends): less sensitive to other load on the machine.
        gbytes = bps * (seconds + 1) / 8e9
        return {"gbps": bps / 1e9, "retransmits": retr, "rtt_ms": rtt, "cpu_s_per_gb": cpu / gbytes}
    finally:
        a.stop()
        b.stop()


def idle_rss_with_peers(lab: Lab, npeers: int) -> float:
    """RSS (MiB) of an idle meshscale-wireguard holding npeers configured peers."""
    host = lab.hosts["a"]
    end = start_end(host, "meshscale", 1, port=51900, log_dir=lab.workdir)
    try:
        lines = []
        for i in range(npeers):
            _, pub = wg_genkey()
            lines.append(
                f"[Peer]\nPublicKey = {pub}\nAllowedIPs = 10.{100 + i // 65536}."
                f"{(i // 256) % 256}.{i % 256}/32\nEndpoint = 203.0.113.250:{1000 + i}\n"
            )
        conf = Path(lab.workdir) / "peers.conf"
        conf.write_text(
            f"[Interface]\nPrivateKey = {end.private_key}\nListenPort = 51900\n\n"
            + "\n".join(lines)
        )
        host.run(["wg", "setconf", end.ifname, str(conf)], timeout=120)
        count = len(end.wg("show", end.ifname, "peers").split())
        assert count == npeers, count
        time.sleep(2.0)
        status = Path(f"/proc/{end.proc.pid}/status").read_text()
        kb = int(re.search(r"VmRSS:\s+(\d+)", status).group(1))  # type: ignore[union-attr]
        return kb / 1024
    finally:
        end.stop()


def print_trace(directory: Path) -> None:
    """One timeline per ping from both daemons' stamps (wgengine/trace.py): A seals the
    request, B opens it, B seals the reply, A opens it. Medians in microseconds."""
    events: list[tuple[int, str, int, list[int]]] = []
    for n, f in enumerate(sorted(directory.glob("trace-*.txt"))):
        for line in f.read_text().split("\n"):
            parts = line.split()
            if len(parts) == 5:
                events.append((int(parts[1]), parts[0], n, [int(x) for x in parts[1:]]))
    events.sort()
    names = [
        "A read->send",
        "A sendmsg",
        "A after",
        "A sent->B recv'd",
        "B recv->write",
        "B TUN write",
        "B after",
        "B written->B read",
        "B read->send",
        "B sendmsg",
        "B after",
        "B sent->A recv'd",
        "A recv->write",
        "A TUN write",
        "A after",
        "in daemons + kernel, A read->A written",
    ]
    rows: list[list[float]] = []
    for i in range(len(events) - 3):
        quad = events[i : i + 4]
        kinds = [(e[1], e[2]) for e in quad]
        a, b = quad[0][2], quad[1][2]
        if a == b or kinds != [("tx", a), ("rx", b), ("tx", b), ("rx", a)]:
            continue
        if quad[3][3][3] - quad[0][0] > 5_000_000:  # not one ping (a lost or a late one)
            continue
        row: list[float] = []
        prev_end = None
        for e in quad:
            s = e[3]
            if prev_end is not None:
                row.append((s[0] - prev_end) / 1e3)
            row += [(s[1] - s[0]) / 1e3, (s[2] - s[1]) / 1e3, (s[3] - s[2]) / 1e3]
            prev_end = s[2]
        row.append((quad[3][3][2] - quad[0][0]) / 1e3)
        rows.append(row)
    if not rows:
        print("trace: no complete ping timeline")
        return
    print(f"trace: {len(rows)} pings, median us per stage")
    for k, name in enumerate(names):
        vals = sorted(r[k] for r in rows)
        print(f"  {name:40s} {statistics.median(vals):8.1f}  (p90 {vals[len(vals) * 9 // 10]:.1f})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--peers", type=int, default=1000)
    ap.add_argument("--pings", type=int, default=50, help="pings per round, 20 ms apart")
    ap.add_argument("--rtt-only", action="store_true", help="no iperf3: RTT only, no RSS")
    ap.add_argument("--trace", action="store_true", help="stage times of meshscale's lone pings")
    ap.add_argument(
        "--baseline-src",
        type=Path,
        help="also run meshscale from this src/ tree (PYTHONPATH) as meshscale-base: before/after",
    )
    args = ap.parse_args()
    if args.rtt_only:
        args.seconds, args.peers = 0, 0
    impls = ["wireguard-go", "meshscale"]
    if have_upstream_wireguard_go():
        impls.insert(1, "wireguard-go-upstream")
    else:
        print("upstream wireguard-go not built: comparing with Debian's only")
    if args.baseline_src:
        impls.insert(len(impls) - 1, "meshscale-base")
    results: dict[str, list[dict[str, float]]] = {impl: [] for impl in impls}
    with Lab(hint="bwg") as lab:
        lab.add_public_host("a")
        lab.add_public_host("b")
        for r in range(args.rounds):
            for impl in impls:
                trace_dir = Path(lab.workdir) / f"trace-{r}-{impl}"
                traced = args.trace and impl.startswith("meshscale")
                if traced:
                    trace_dir.mkdir()
                    os.environ[TRACE_ENV] = str(trace_dir)
                pythonpath = os.environ.get("PYTHONPATH")
                if impl == "meshscale-base":
                    os.environ["PYTHONPATH"] = str(args.baseline_src)
                try:
                    res = one_round(lab, impl.removesuffix("-base"), args.seconds, args.pings)
                finally:
                    os.environ.pop(TRACE_ENV, None)
                    if pythonpath is None:
                        os.environ.pop("PYTHONPATH", None)
                    else:
                        os.environ["PYTHONPATH"] = pythonpath
                if traced:
                    print_trace(trace_dir)
                results[impl].append(res)
                print(
                    f"round {r + 1} {impl:21s} {res['gbps']:.3f} Gbit/s  "
                    f"retransmits {int(res['retransmits'])}  rtt {res['rtt_ms']:.3f} ms  "
                    f"cpu {res['cpu_s_per_gb']:.2f} s/GB",
                    flush=True,
                )
        med = {
            impl: {k: statistics.median(x[k] for x in rs) for k in rs[0]}
            for impl, rs in results.items()
        }
        print()
        for impl, m in med.items():
            print(
                f"median {impl:21s} {m['gbps']:.3f} Gbit/s  rtt {m['rtt_ms']:.3f} ms  "
                f"cpu {m['cpu_s_per_gb']:.2f} s/GB"
            )
        ours = med["meshscale"]
        for ref in (i for i in impls if i != "meshscale"):
            if args.rtt_only:
                print(f"meshscale / {ref}: RTT {ours['rtt_ms'] / med[ref]['rtt_ms']:.2f}x")
                continue
            print(
                f"meshscale / {ref}: throughput {ours['gbps'] / med[ref]['gbps']:.2f}x  "
                f"RTT {ours['rtt_ms'] / med[ref]['rtt_ms']:.2f}x  "
                f"CPU per GB {ours['cpu_s_per_gb'] / med[ref]['cpu_s_per_gb']:.2f}x"
            )
        if args.peers:
            rss = idle_rss_with_peers(lab, args.peers)
            print(f"idle RSS of meshscale-wireguard with {args.peers} peers: {rss:.1f} MiB")


if __name__ == "__main__":
    main()
