"""Hard-NAT (birthday-paradox) probing benchmark: probes per success and time to direct.

    .venv/bin/python benchmarks/bench_nat.py                 # the model only (seconds)
    .venv/bin/python benchmarks/bench_nat.py --lab           # + the lab (root, ~2 min)

Model: the real planner (magicsock.hardnat) sprays against a hard NAT that has ``--ports``
random mappings open towards us among Linux's 64512 (1024-65535); per trial, the probes sent
before the first hit, and whether the budget sufficed. The baseline in the same run is the
same spray against one open mapping (no birthday: what a plain port scan would need).

Lab: our nodes behind the lab's routers (easy = port-preserving masquerade, hard =
``fully-random``), as tests/lab/test_node_hardnat.py: seconds from the first packet to a
direct path (``status --json`` CurAddr) per pair kind, and the HardNATProbes counters.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

from meshscale.disco import AddrPort
from meshscale.key import NodePublic
from meshscale.magicsock.hardnat import (
    PORT_MAX,
    PORT_MIN,
    START_DELAY,
    ProbeBudget,
    ProbePlanner,
    Role,
)

PEER = NodePublic(bytes([9]) * 32)
HARD = AddrPort.parse("203.0.113.13:54541")


def spray_until_hit(holes: int, budget: ProbeBudget, rng: random.Random) -> int | None:
    """Probes sent up to and including the first that hits one of ``holes`` open ports."""
    open_ports = set(rng.sample(range(PORT_MIN, PORT_MAX + 1), holes))
    p = ProbePlanner(budget, rng.randbytes)
    p.start(PEER, Role.SPRAY, [HARD], 0.0)
    n = 0
    t = START_DELAY
    while (nt := p.get_timer()) is not None and nt <= START_DELAY + budget.seconds:
        t = max(t, nt)
        p.handle_timer(t)
        for pr in p.take_probes():
            n += 1
            if pr.dst.port in open_ports:
                return n
        t += 0.001
    return None


def model(trials: int, ports: int, packets: int) -> None:
    budget = ProbeBudget(packets=packets, ports=ports)
    for holes, label in ((ports, f"{ports} hard-side sockets"), (1, "baseline: 1 mapping")):
        rng = random.Random(holes)
        got = [spray_until_hit(holes, budget, rng) for _ in range(trials)]
        hits = sorted(n for n in got if n is not None)
        rate = len(hits) / trials
        theory = 1 - (1 - packets / (PORT_MAX - PORT_MIN + 1)) ** holes
        line = f"{label:>24}: success {rate:6.1%} within {packets} probes (theory {theory:.1%})"
        if hits:
            q = statistics.quantiles(hits, n=20) if len(hits) > 1 else [hits[0]] * 19
            line += f"; probes per success p50 {statistics.median(hits):.0f} p95 {q[18]:.0f}"
        print(line)


def lab(ports: int, packets: int) -> None:
    from meshscale.lab import Lab, NatKind
    from meshscale.lab.meshnet import MeshNet, wait_direct
    from meshscale.lab.miniupnpd import start_stun, stun_only_region

    kinds = {"e1": NatKind.EASY, "e2": NatKind.EASY, "h1": NatKind.HARD, "h2": NatKind.HARD}
    pairs = [("e1", "e2"), ("e1", "h1"), ("h1", "h2")]
    with tempfile.TemporaryDirectory() as tmp, Lab(hint="hnb", workdir=Path(tmp) / "lab") as lb:
        stun = lb.add_public_host("stun")
        start_stun(stun)
        region = stun_only_region(Path(tmp) / "region.json", str(stun.ip))
        net = MeshNet(lb, Path(tmp) / "net", control_config={"derp": {"paths": [str(region)]}})
        net.start_control()
        args = ["--hard-nat-probes", str(packets), "--hard-nat-ports", str(ports)]
        nodes = {
            n: net.add_node(n, lb.add_private_host(n, lb.add_nat(f"r{n}", k)), wait=False,
                            args=args)
            for n, k in kinds.items()
        }  # fmt: skip
        net.up_all(list(nodes.values()))
        ips = {n: node.ip4() for n, node in nodes.items()}
        for a, b in pairs:
            t0 = time.monotonic()
            nodes[a].host.spawn(
                ["ping", "-q", "-i", "0.2", "-c", "60", ips[b]], log_name=f"p{a}{b}"
            )
            peer = wait_direct(lambda a=a, b=b: nodes[a].peer(b), t0 + 8)
            took = time.monotonic() - t0
            res = f"direct in {took:.2f} s" if peer.get("CurAddr") else "relayed after 8 s"
            print(f"lab {a}<->{b}: {res}  ({peer.get('CurAddr') or 'DERP'})")
        time.sleep(1)
        for n in ("e1", "h1", "h2"):
            c = nodes[n].status()["HardNATProbes"]
            print(f"lab {n} HardNATProbes: attempts {c['Attempts']} sent {c['Sent']} "
                  f"successes {c['Successes']} sockets open {c['SocketsOpen']}")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=400)
    ap.add_argument("--ports", type=int, default=ProbeBudget().ports)
    ap.add_argument("--packets", type=int, default=ProbeBudget().packets)
    ap.add_argument("--lab", action="store_true", help="also time pairs in the lab (root)")
    a = ap.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f} (1 min)")
    model(a.trials, a.ports, a.packets)
    model(a.trials, a.ports, 256)
    if a.lab:
        lab(a.ports, a.packets)
    print(f"load average {os.getloadavg()[0]:.2f} (1 min)")


if __name__ == "__main__":
    main()
