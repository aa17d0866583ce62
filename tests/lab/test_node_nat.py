"""Acceptance: meshscaled nodes behind the lab's NAT kinds, one tailnet on our control server.

Nodes: p (public), e1 and e2 (easy NAT each), h (hard NAT), u (UDP-blocking NAT). Every pair
carries TCP through the tunnel; public<->UDP-capable and easy<->easy pairs report a direct
path in ``status --json`` within seconds of traffic; the UDP-blocked node only ever relays.
"""

from __future__ import annotations

import functools
import itertools
import json
import sys
import time
from pathlib import Path

import pytest

from meshscale.lab import Lab, NatKind
from meshscale.lab.meshnet import MeshNet, MeshNode, wait_direct

pytestmark = [pytest.mark.lab, pytest.mark.slow]

ECHO_PORT = 7000
DIRECT_DEADLINE = 20.0  # seconds of traffic before a direct path must show


def _tcp(src: MeshNode, dst_ip: str) -> str | None:
    res = src.host.run(
        [sys.executable, "-m", "meshscale.lab.echo", "probe", "--tcp", f"{dst_ip}:{ECHO_PORT}"],
        timeout=30, check=False,
    )  # fmt: skip
    if res.returncode != 0:
        return None
    return json.loads(res.stdout)["tcp"].get(f"{dst_ip}:{ECHO_PORT}")


def test_nat_matrix(need_lab: None, tmp_path: Path) -> None:
    with Lab(hint="nnat", workdir=tmp_path / "lab") as lab:
        net = MeshNet(lab, tmp_path / "net")
        net.start_control()
        hosts = {"p": lab.add_public_host("p")}
        for name, kind in (("e1", NatKind.EASY), ("e2", NatKind.EASY), ("h", NatKind.HARD),
                           ("u", NatKind.UDP_BLOCK)):  # fmt: skip
            hosts[name] = lab.add_private_host(name, lab.add_nat(f"r{name}", kind))
        nodes = {name: net.add_node(name, host) for name, host in hosts.items()}
        try:
            for n in nodes.values():
                n.up()
            ips = {name: n.ip4() for name, n in nodes.items()}
            for n in nodes.values():
                n.host.spawn([sys.executable, "-m", "meshscale.lab.echo", "serve", "--tcp",
                              str(ECHO_PORT)], log_name=f"echo-{n.name}")  # fmt: skip
            time.sleep(0.5)
            st = nodes["p"].status()
            assert st["BackendState"] == "Running"
            assert {p["HostName"] for p in st["Peer"].values()} == {"e1", "e2", "h", "u"}
            for a, b in itertools.permutations(nodes, 2):
                got = _tcp(nodes[a], ips[b])
                assert got is not None and got.split()[0] == ips[a], f"TCP {a}->{b}: {got}"

            direct_pairs = [("p", "e1"), ("p", "e2"), ("p", "h"), ("e1", "e2")]
            for a, b in [*direct_pairs, ("h", "u")]:
                nodes[a].host.spawn(["ping", "-q", "-i", "0.2", "-c", "150", ips[b]],
                                    log_name=f"ping-{a}-{b}")  # fmt: skip
            deadline = time.monotonic() + DIRECT_DEADLINE
            for a, b in direct_pairs:
                peer = wait_direct(functools.partial(nodes[a].peer, nodes[b].name), deadline)
                assert peer.get("CurAddr"), f"{a}->{b} has no direct path: {peer}"
                assert peer["Active"] and peer["TxBytes"] > 0 and peer["RxBytes"] > 0
            for a, b in (("h", "u"), ("p", "u")):
                peer = nodes[a].peer(b)
                assert peer["CurAddr"] == "" and peer["Relay"] == "lab", peer
            table = nodes["p"].cli("status").stdout
            assert "active; direct" in table, table
        except BaseException:
            for n in nodes.values():
                print(f"--- {n.name} ---\n{n.log()[-2000:]}")
            raise
