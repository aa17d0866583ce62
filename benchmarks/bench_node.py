"""Node-agent benchmark: time to a direct path through two easy NATs, and throughput over a
direct path through meshscaled vs raw meshscale-wireguard (same lab, same MTU 1280).

    .venv/bin/python benchmarks/bench_node.py [--rounds 3] [--seconds 10]

Direct path: two meshscaled nodes, each behind its own easy NAT; after both are Running, one
pings the other every 0.1 s and we time until ``status --json`` shows ``CurAddr`` on both
sides. Throughput: iperf3 TCP between two public hosts, over meshscaled (after its direct
path formed) and over a meshscale-wireguard pair with static endpoints. Rounds alternate.

Not a test: run it by hand (as root) and copy the figures into the README.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from meshscale.lab import Host, Lab, NatKind
from meshscale.lab.meshnet import MeshNet, MeshNode
from meshscale.lab.wgpair import connect, start_end

MTU = 1280  # bytes: meshscaled's TUN MTU; the raw pair uses the same


def iperf(client: Host, server: Host, ip: str, seconds: int) -> float:
    srv = server.spawn(["iperf3", "-s", "-1", "-B", ip], log_name="iperf-s")
    try:
        time.sleep(0.3)
        res = client.run(["iperf3", "-c", ip, "-t", str(seconds), "-J", "-O", "1"],
                         timeout=seconds + 30, check=False)  # fmt: skip
        if res.returncode != 0:
            raise RuntimeError(res.stdout[-1500:] + res.stderr)
        return float(json.loads(res.stdout)["end"]["sum_received"]["bits_per_second"])
    finally:
        srv.stop()


def wait_direct(a: MeshNode, b: MeshNode, limit: float = 30.0) -> float:
    t0 = time.monotonic()
    a.host.spawn(["ping", "-q", "-i", "0.1", "-c", str(int(limit * 10)), b.ip4()], log_name="p")
    while time.monotonic() - t0 < limit:
        if a.peer(b.name).get("CurAddr") and b.peer(a.name).get("CurAddr"):
            return time.monotonic() - t0
        time.sleep(0.1)
    raise RuntimeError("no direct path")


def direct_round(tmp: Path, i: int) -> float:
    with Lab(hint=f"bnd{i}", workdir=tmp / f"d{i}" / "lab") as lab:
        net = MeshNet(lab, tmp / f"d{i}" / "net")
        net.start_control()
        a = net.add_node("a", lab.add_private_host("a", lab.add_nat("ra", NatKind.EASY)))
        b = net.add_node("b", lab.add_private_host("b", lab.add_nat("rb", NatKind.EASY)))
        a.up()
        b.up()
        return wait_direct(a, b)


def throughput_round(tmp: Path, i: int, seconds: int) -> dict[str, float]:
    out: dict[str, float] = {}
    with Lab(hint=f"bnt{i}", workdir=tmp / f"t{i}" / "lab") as lab:
        ha, hb = lab.add_public_host("a"), lab.add_public_host("b")
        wa = start_end(ha, "meshscale", 1, mtu=MTU, log_dir=lab.workdir)
        wb = start_end(hb, "meshscale", 2, mtu=MTU, log_dir=lab.workdir)
        try:
            connect(wa, wb)
            ha.run(["ping", "-c", "2", "-W", "3", wb.tunnel_ip], timeout=20)
            out["raw_wireguard_gbps"] = iperf(ha, hb, wb.tunnel_ip, seconds) / 1e9
        finally:
            wa.stop()
            wb.stop()
        net = MeshNet(lab, tmp / f"t{i}" / "net")
        net.start_control()
        a, b = net.add_node("ma", ha), net.add_node("mb", hb)
        a.up()
        b.up()
        wait_direct(a, b)
        out["meshscaled_gbps"] = iperf(ha, hb, b.ip4(), seconds) / 1e9
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=10)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-node-"))
    direct = []
    tput: dict[str, list[float]] = {}
    for i in range(args.rounds):
        direct.append(direct_round(tmp, i))
        print(f"round {i}: direct path through two easy NATs after {direct[-1]:.2f} s", flush=True)
        for k, v in throughput_round(tmp, i, args.seconds).items():
            tput.setdefault(k, []).append(v)
            print(f"round {i}: {k} = {v:.3f}", flush=True)
    print(f"\nmedian time to direct path: {statistics.median(direct):.2f} s")
    for k, vs in tput.items():
        print(f"median {k}: {statistics.median(vs):.3f} Gbit/s")
    raw, ms = (
        statistics.median(tput["raw_wireguard_gbps"]),
        statistics.median(tput["meshscaled_gbps"]),
    )
    print(f"meshscaled / raw meshscale-wireguard: {ms / raw:.2f}")


if __name__ == "__main__":
    main()
