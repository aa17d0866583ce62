"""Benchmark (#18 goal 3): time to a direct path per pair kind, IPv6 against the IPv4 baseline.

One lab run, one control server; the pair kinds take turns, each round a fresh pair of
meshscaled nodes on fresh routers (the previous pair stopped):

    v4 easy-easy     EASY IPv4 NATs, no IPv6: direct over IPv4 (the baseline)
    v6 hard-hard     HARD IPv4 NATs, firewalled IPv6 LANs: direct over IPv6 only
    dual easy-easy   EASY NATs and IPv6 LANs: whichever family wins (IPv6 on equal latency)

Time to direct: from starting a ping through the tunnel (both nodes Running) until both sides'
status shows a CurAddr, polled every 50 ms over the local API socket (no CLI start-up in the
measurement). Not a test: run it by hand (as root) and copy the figures into the README.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from meshscale.cli.localclient import LocalClient
from meshscale.lab import Lab, NatKind
from meshscale.lab.meshnet import MeshNet, MeshNode
from meshscale.lab.v6 import add_v6_host, enable_v6_lan

KINDS = {
    "v4 easy-easy": (NatKind.EASY, False),
    "v6 hard-hard": (NatKind.HARD, True),
    "dual easy-easy": (NatKind.EASY, True),
}
LIMIT = 30.0  # seconds per pair


def _cur(node: MeshNode, peer: str) -> str:
    st: dict[str, Any] = LocalClient(node.socket, timeout=5.0).get("status")
    for p in (st.get("Peer") or {}).values():
        if p.get("HostName") == peer:
            return str(p.get("CurAddr") or "")
    return ""


def one_pair(lab: Lab, net: MeshNet, i: int, kind: NatKind, v6: bool) -> tuple[float, int]:
    """Seconds to direct on both sides, and the IP version of a's CurAddr."""
    nodes = []
    for side in ("a", "b"):
        router = lab.add_nat(f"r{side}{i}", kind)
        if v6:
            enable_v6_lan(router)
        host = lab.add_private_host(f"{side}{i}", behind=router)
        if v6:
            add_v6_host(host)
        nodes.append(net.add_node(f"{side}{i}", host, wait=False))
    a, b = nodes
    try:
        net.up_all(nodes)
        t0 = time.monotonic()
        a.host.spawn(["ping", "-q", "-i", "0.1", "-c", str(int(LIMIT * 10)), b.ip4()])
        while time.monotonic() - t0 < LIMIT:
            cur_a, cur_b = _cur(a, b.name), _cur(b, a.name)
            if cur_a and cur_b:
                took = time.monotonic() - t0
                ip = ipaddress.ip_address(cur_a.rpartition(":")[0].strip("[]"))
                return took, ip.version
            time.sleep(0.05)
        raise RuntimeError(f"round {i}: no direct path in {LIMIT} s")
    finally:
        for n in nodes:
            n.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-v6-"))
    times: dict[str, list[float]] = {k: [] for k in KINDS}
    fams: dict[str, list[int]] = {k: [] for k in KINDS}
    with Lab(hint="v6h", workdir=tmp / "lab") as lab:
        net = MeshNet(lab, tmp / "net")
        net.start_control()
        i = 0
        for _ in range(args.rounds):
            for name, (kind, v6) in KINDS.items():
                i += 1
                took, fam = one_pair(lab, net, i, kind, v6)
                times[name].append(took)
                fams[name].append(fam)
    print(f"load average at end: {os.getloadavg()}")
    base = statistics.median(times["v4 easy-easy"])
    for name in KINDS:
        med = statistics.median(times[name])
        print(
            f"{name:15s} median {med:5.2f} s (x{med / base:.2f} of v4) "
            f"max {max(times[name]):5.2f} s; direct over IPv{sorted(set(fams[name]))}"
        )


if __name__ == "__main__":
    main()
