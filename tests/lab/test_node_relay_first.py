"""Acceptance (issue #14, goal 3): a node is usable when ``up`` returns.

Two meshscaled nodes, each behind a UDP-blocking NAT, so they can only ever talk through the
DERP relay. Right after ``meshscale up`` returns on the second node, a ping to the first
must succeed within 2 s: ``up`` waits until the node can carry traffic (home DERP connected,
peers known), and the first packet goes through DERP while UDP paths are still probed.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from meshscale.lab import Lab, NatKind
from meshscale.lab.meshnet import MeshNet

pytestmark = [pytest.mark.lab, pytest.mark.slow]

FIRST_PING_DEADLINE = 2  # seconds (ping -w)


def test_ping_relay_only_peer_right_after_up(need_lab: None, tmp_path: Path) -> None:
    with Lab(hint="nrly", workdir=tmp_path / "lab") as lab:
        net = MeshNet(lab, tmp_path / "net")
        net.start_control()
        hosts = {n: lab.add_private_host(n, lab.add_nat(f"r{n}", NatKind.UDP_BLOCK)) for n in "ab"}
        a, b = (net.add_node(n, h) for n, h in hosts.items())
        try:
            a.up()
            a_ip = a.ip4()
            t0 = time.monotonic()
            b.up()
            took_up = time.monotonic() - t0
            # One echo request every 0.2 s until the first reply, for at most 2 s.
            res = b.host.run(
                ["ping", "-n", "-q", "-i", "0.2", "-c", "1", "-w", str(FIRST_PING_DEADLINE), a_ip],
                timeout=FIRST_PING_DEADLINE + 10, check=False,
            )  # fmt: skip
            assert res.returncode == 0, f"no reply within {FIRST_PING_DEADLINE} s: {res.stdout}"
            assert took_up < 30
            peer = b.peer("a")
            assert peer["CurAddr"] == "" and peer["Relay"] == "lab", peer
        except BaseException:
            for n in (a, b):
                print(f"--- {n.name} ---\n{n.log()[-3000:]}")
            raise
