"""``meshscale lab``: a whole tailnet on this machine, in network namespaces.

Starts our control server (with its embedded DERP and STUN) and one meshscaled node per kind
of network: public, two behind easy NATs, one behind a hard NAT, one behind a NAT that drops
UDP. Brings them up, drives a little traffic, prints every node's ``meshscale status`` and a
ping matrix, then keeps running until Ctrl-C and tears everything down. Needs root.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

from .localclient import CLIError, LocalClient

NODES = (
    ("public", None),
    ("easy1", "easy"),
    ("easy2", "easy"),
    ("hard", "hard"),
    ("udpblock", "udp_block"),
)
WARMUP = 8.0  # seconds of traffic before the status tables: enough for direct paths


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("lab", help="run a demo tailnet behind different NATs on this machine")
    p.add_argument("--nodes", type=int, default=len(NODES), choices=range(2, len(NODES) + 1),
                   metavar="N", help=f"how many nodes (2-{len(NODES)})")  # fmt: skip
    p.add_argument("--workdir", default="", help="keep logs here (default: a temporary dir)")
    p.add_argument("--once", action="store_true", help="exit after printing instead of waiting")
    p.set_defaults(run=run)


def run(args: argparse.Namespace, client: LocalClient) -> int:
    if os.geteuid() != 0:
        raise CLIError("meshscale lab needs root (it creates network namespaces)")
    from meshscale.lab import Lab, LabError, NatKind

    from .labnet import MeshLabError, MeshNet

    workdir = (
        Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="meshscale-lab-"))
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    t0 = time.monotonic()
    try:
        with Lab(hint="demo", workdir=workdir / "lab") as lab:
            net = MeshNet(lab, workdir / "net")
            print("starting control server (ts2021 + DERP + STUN) ...", flush=True)
            net.start_control()
            nodes = []
            for name, kind in NODES[: args.nodes]:
                if kind is None:
                    host = lab.add_public_host(name)
                    where = f"public {host.ip}"
                else:
                    router = lab.add_nat(f"nat-{name}", NatKind(kind))
                    host = lab.add_private_host(name, router)
                    where = f"{kind} NAT {router.ip} -> {host.ip}"
                print(f"starting meshscaled {name:9} ({where})", flush=True)
                nodes.append(net.add_node(name, host, wait=False))
            net.up_all(nodes)
            ips = {n.name: n.ip4() for n in nodes}
            print(f"all {len(nodes)} nodes Running after {time.monotonic() - t0:.1f}s; "
                  f"warming up paths for {WARMUP:g}s ...", flush=True)  # fmt: skip
            for a in nodes:
                for b in nodes:
                    if a is not b:
                        a.host.spawn(["ping", "-q", "-i", "0.5", "-c", str(int(WARMUP * 2)),
                                      ips[b.name]], log_name=f"warm-{a.name}-{b.name}")  # fmt: skip
            stop.wait(WARMUP)
            for n in nodes:
                print(f"\n$ meshscale status    # on {n.name}")
                print(n.cli("status").stdout.rstrip())
            print("\nping matrix (disco ping, first pong):")
            for a in nodes:
                for b in nodes:
                    if a is b or stop.is_set():
                        continue
                    res = a.cli("ping", "-c", "1", "--until-direct=false", b.name, check=False)
                    line = (res.stdout.strip() or res.stderr.strip()).splitlines()[-1:]
                    print(f"  {a.name:9} -> {line[0] if line else '?'}")
            if not args.once or args.workdir:
                print(f"\nlogs: {workdir}")
            if not args.once:
                print("sockets (meshscale --socket PATH status):")
                for n in nodes:
                    print(f"  {n.name:9} {n.socket}")
                print("running; press Ctrl-C to tear down", flush=True)
                while not stop.wait(1.0):
                    if net.ctl_proc is None or not net.ctl_proc.running:
                        raise CLIError("the control server exited; see " + str(workdir))
            print("tearing down ...", flush=True)
    except (LabError, MeshLabError) as exc:
        raise CLIError(str(exc).splitlines()[0]) from exc
    finally:
        if not args.workdir and args.once:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(1)
