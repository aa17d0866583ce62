"""Benchmark (#15): TCP throughput through our exit node and our subnet router vs the direct
tunnel to the same node, in one lab run.

Topology: control; router ``r`` (our meshscaled, public) advertising 198.51.100.0/24 and
offering itself as exit node; the LAN host 198.51.100.100 behind it (no client); ``www`` on the
lab internet; client ``c`` (our meshscaled, public) with --accept-routes and --exit-node=r.
iperf3 from c to r's tailnet IP (direct tunnel), to the LAN host (subnet router: tunnel, then
forward + SNAT) and to www (exit node: tunnel, forward, masquerade). Rounds alternate.

Not a test: run it by hand (as root) and copy the figures into the README.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from bench_node import iperf, wait_direct

from meshscale.lab import Lab
from meshscale.lab.meshnet import MeshNet
from meshscale.lab.subnet import LAN_PREFIX, add_lan, enable_forwarding

APPROVE = "198.51.100.0/24,0.0.0.0/0,::/0"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=10)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-routes-"))
    with Lab(hint="bro", workdir=tmp / "lab") as lab:
        net = MeshNet(lab, tmp / "net")
        net.start_control()
        assert net.control is not None
        www = lab.add_public_host("www")
        r = net.add_node("r", lab.add_public_host("r"))
        lan = add_lan(lab, "lan", [r.host])
        enable_forwarding(r.host)
        c = net.add_node("c", lab.add_public_host("c"))
        r.cli(
            "up",
            f"--login-server={net.control_url}",
            f"--authkey={net.authkey}",
            "--hostname=r",
            f"--advertise-routes={LAN_PREFIX}",
            "--advertise-exit-node",
        )
        rows = net.control.nodes()
        rid = next(n["id"] for n in rows if "r" in (n.get("givenName"), n.get("name")))
        net.control.admin("nodes", "approve-routes", "--identifier", str(rid), "--routes", APPROVE)
        c.up()
        wait_direct(c, r)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if (
                c.cli("set", "--accept-routes", f"--exit-node={r.ip4()}", check=False).returncode
                == 0
            ):
                break
            time.sleep(0.5)
        targets = {"direct_tunnel": (r.host, r.ip4()), "subnet_router": (lan, str(lan.ip)),
                   "exit_node": (www, str(www.ip))}  # fmt: skip
        got: dict[str, list[float]] = {k: [] for k in targets}
        for i in range(args.rounds):
            for name, (server, ip) in targets.items():
                gbps = iperf(c.host, server, ip, args.seconds) / 1e9
                got[name].append(gbps)
                print(f"round {i}: {name} = {gbps:.3f} Gbit/s", flush=True)
        base = statistics.median(got["direct_tunnel"])
        for name, vs in got.items():
            med = statistics.median(vs)
            print(f"median {name}: {med:.3f} Gbit/s ({med / base:.2f} of direct)")


if __name__ == "__main__":
    main()
