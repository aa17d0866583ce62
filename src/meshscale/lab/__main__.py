"""The demo behind ``scripts/lab``: a whole tailnet on this machine, in network namespaces.

    python -m meshscale.lab [--nodes N] [--workdir DIR] [--once]

Starts our control server (``meshscale-control serve`` with its embedded DERP and STUN) under
an access policy file (HuJSON; edit it and control reloads it) and one meshscaled node per kind
of network: public (offering itself as exit node), two behind easy NATs, one behind a hard NAT,
one behind a NAT that drops UDP. Brings them up, drives a little traffic, prints every node's
``meshscale status``, a ping matrix, the exit nodes on offer, MagicDNS names resolved through a
node's own system resolver, and the admin console's URL with an API key to sign in, then keeps
running until Ctrl-C and tears everything down. Needs root. It lives in the lab, not in the
``meshscale`` CLI: product code never imports the lab.
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
from collections.abc import Sequence
from pathlib import Path

from meshscale.lab.lab import Lab
from meshscale.lab.meshnet import BASE_DOMAIN, CONTROL_NAME, MeshLabError, MeshNet, MeshNode
from meshscale.lab.nat import NatKind
from meshscale.lab.netns import LabError

PROG = "scripts/lab"

NODES = (
    ("public", None),
    ("easy1", "easy"),
    ("easy2", "easy"),
    ("hard", "hard"),
    ("udpblock", "udp_block"),
)
# The demo's policy: what a first tailnet policy looks like. Edit the file while the demo runs
# (e.g. drop the second rule) and control reloads it within a second.
POLICY = """// meshscale lab policy (Tailscale's format; comments and trailing commas are fine)
{
  "acls": [
    // every node of the lab user reaches every other one, on every port
    {"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:member:*"]},
    // and may use exit nodes: without this rule no exit node is offered to them
    {"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:internet:*"]},
  ],
  "tests": [
    {"src": "lab@", "accept": ["autogroup:member:22"]},
  ],
}
"""
WARMUP = 8.0  # seconds of traffic before the status tables: enough for direct paths


class DemoError(Exception):
    """A failure of the demo, printed as one line."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG, description="run a demo tailnet behind different NATs on this machine"
    )
    p.add_argument("--nodes", type=int, default=len(NODES), choices=range(2, len(NODES) + 1),
                   metavar="N", help=f"how many nodes (2-{len(NODES)})")  # fmt: skip
    p.add_argument("--workdir", default="", help="keep logs here (default: a temporary dir)")
    p.add_argument("--once", action="store_true", help="exit after printing instead of waiting")
    return p


def run(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        raise DemoError("needs root (it creates network namespaces)")
    workdir = (
        Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="meshscale-lab-"))
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    t0 = time.monotonic()
    try:
        with Lab(hint="demo", workdir=workdir / "lab") as lab:
            policy = workdir / "policy.hujson"
            policy.write_text(POLICY)
            ctl_cfg = {"policy": {"mode": "file", "path": str(policy)}}
            net = MeshNet(lab, workdir / "net", control_config=ctl_cfg)
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
            if nodes[0].name == "public":
                _offer_exit_node(net, nodes[0])
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
            _names_and_console(net, nodes, policy)
            if not args.once or args.workdir:
                print(f"\nlogs: {workdir}")
            if not args.once:
                print("sockets (meshscale --socket PATH status):")
                for n in nodes:
                    print(f"  {n.name:9} {n.socket}")
                print("running; press Ctrl-C to tear down", flush=True)
                while not stop.wait(1.0):
                    if net.ctl_proc is None or not net.ctl_proc.running:
                        raise DemoError("the control server exited; see " + str(workdir))
            print("tearing down ...", flush=True)
    except (LabError, MeshLabError) as exc:
        raise DemoError(str(exc).splitlines()[0]) from exc
    finally:
        if not args.workdir and args.once:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


def _offer_exit_node(net: MeshNet, node: MeshNode) -> None:
    """The public node offers itself as exit node; the admin approves its /0 routes (approval
    may come before the announcement: the routes serve once both are there)."""
    assert net.control is not None
    node.cli("set", "--advertise-exit-node")
    row = next(r for r in net.control.nodes() if node.name in (r.get("givenName"), r.get("name")))
    net.control.admin("nodes", "approve-routes", "--identifier", str(row["id"]),
                      "--routes", "0.0.0.0/0,::/0")  # fmt: skip


def _names_and_console(net: MeshNet, nodes: list[MeshNode], policy: Path) -> None:
    """MagicDNS through a node's ordinary resolver, the policy in force, the console URL."""
    a, b = nodes[0], nodes[-1]
    if a.name == "public" and len(nodes) > 1:
        user = nodes[1]
        print(f"\n$ meshscale exit-node list    # on {user.name} (set --exit-node=public uses it)")
        # The offer reaches easy1 once the announcement and the approval have both gone round
        # the map streams: wait for it, bounded, rather than print a list that is about to change.
        deadline = time.monotonic() + 10.0
        out = ""
        while time.monotonic() < deadline:
            out = user.cli("exit-node", "list", check=False).stdout.rstrip()
            if f" {a.name} " in out:
                break
            time.sleep(0.3)
        print(out)
    print(f"\nMagicDNS (getent on {a.name}, through its resolv.conf -> 100.100.100.100):")
    for name in (b.name, f"{b.name}.{BASE_DOMAIN}"):
        res = a.host.run(["getent", "hosts", name], check=False)
        print(f"  {name:24} {res.stdout.split()[0] if res.returncode == 0 else 'not found'}")
    assert net.control is not None
    print(f"\npolicy: {policy} (edit it: control reloads within a second)")
    key = net.control.admin("apikeys", "create", "--expiration", "24h").stdout.strip()
    url = f"https://{CONTROL_NAME}/admin"
    page = a.host.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert",
                       str(net.ca.cert_path), url], check=False)  # fmt: skip
    print(f"admin console: {url} (HTTP {page.stdout or '?'} from "
          f"{a.name}); sign in with API key {key.splitlines()[-1] if key else '?'}")  # fmt: skip
    print(f"  from the lab: ip netns exec {a.host.ns} curl --cacert {net.ca.cert_path} {url}")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except DemoError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
