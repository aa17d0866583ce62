"""Hard-NAT (birthday-paradox) probing between our nodes in the lab (issue #18 goal 2).

The lab's hard router masquerades ``fully-random`` (a random public port per destination,
anywhere in 1024-65535: Linux's default range, as a home router's), the easy one keeps ports.
A second, STUN-only DERP region on another public host lets netcheck see the hard NAT's
mapping vary by destination (MappingVariesByDestIP), as the many regions of a real DERP map do.

- easy<->hard: direct within 5 s of traffic after ``up``, through the hard side's probe sockets,
  with at most the configured budget sent (status --json ``HardNATProbes``);
- hard<->hard: stays relayed, sends no probe at all, and stays quiet.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from meshscale.lab import Lab, NatKind
from meshscale.lab.meshnet import MeshNet, MeshNode, wait_direct
from meshscale.lab.miniupnpd import start_stun, stun_only_region

pytestmark = [pytest.mark.lab, pytest.mark.slow, pytest.mark.timeout(120)]

BUDGET = 2048  # probes per attempt and side
PORTS = 256
DIRECT_WITHIN = 5.0  # seconds of traffic after up


def _varies(node: MeshNode, want: bool, deadline: float) -> None:
    got: Any = None
    while time.monotonic() < deadline:
        got = json.loads(node.cli("netcheck", "--format=json").stdout).get("MappingVariesByDestIP")
        if got is want:
            return
        time.sleep(0.3)
    raise AssertionError(f"{node.name}: MappingVariesByDestIP {got}, want {want}")


def _probes(node: MeshNode) -> dict[str, Any]:
    out: dict[str, Any] = node.status()["HardNATProbes"]
    return out


def test_easy_hard_goes_direct_and_hard_hard_stays_quiet(need_lab: None, tmp_path: Path) -> None:
    with Lab(hint="hn", workdir=tmp_path / "lab") as lab:
        stun = lab.add_public_host("stun")
        start_stun(stun)
        region = stun_only_region(tmp_path / "stun-region.json", str(stun.ip))
        net = MeshNet(lab, tmp_path / "net", control_config={"derp": {"paths": [str(region)]}})
        net.start_control()
        args = ["--hard-nat-probes", str(BUDGET), "--hard-nat-ports", str(PORTS)]
        kinds = {"e": NatKind.EASY, "h1": NatKind.HARD, "h2": NatKind.HARD}
        nodes = {
            name: net.add_node(name, lab.add_private_host(name, lab.add_nat(f"r{name}", kind)),
                               wait=False, args=args)
            for name, kind in kinds.items()
        }  # fmt: skip
        e, h1, h2 = nodes["e"], nodes["h1"], nodes["h2"]
        try:
            net.up_all(list(nodes.values()))
            ips = {n: node.ip4() for n, node in nodes.items()}
            t_up = time.monotonic()  # traffic starts now (each CLI call takes ~1 s here)
            e.host.spawn(["ping", "-q", "-i", "0.2", "-c", "100", ips["h1"]], log_name="ping-e-h1")
            h1.host.spawn(["ping", "-q", "-i", "0.2", "-c", "100", ips["h2"]], log_name="ping-h")
            peer = wait_direct(lambda: e.peer("h1"), t_up + DIRECT_WITHIN)
            took = time.monotonic() - t_up
            assert str(peer.get("CurAddr", "")).startswith(f"{lab.hosts['rh1'].ip}:"), (
                peer, json.dumps(_probes(e)), json.dumps(_probes(h1)))  # fmt: skip
            back = wait_direct(lambda: h1.peer("e"), time.monotonic() + 3)
            assert back.get("CurAddr") == f"{lab.hosts['re'].ip}:41641", back
            print(f"easy<->hard direct {took:.2f} s after up")
            # the NAT kinds as netcheck saw them (after the fact: the race must not wait)
            _varies(e, False, time.monotonic() + 5)
            _varies(h1, True, time.monotonic() + 5)
            pe, ph = _probes(e), _probes(h1)
            print("easy", pe, "hard", ph)
            assert pe["Successes"] >= 1 and pe["Attempts"] >= 1 and ph["Attempts"] >= 1, (pe, ph)
            for c in (pe, ph):
                assert c["Sent"] <= BUDGET * c["Attempts"], c
            assert ph["SocketsOpen"] <= PORTS and ph["Ports"] == PORTS
            # hard<->hard: relayed, no probe ever, and nothing grows while traffic goes on
            assert h1.peer("h2")["CurAddr"] == "" and h2.peer("h1")["CurAddr"] == ""
            p2 = _probes(h2)
            assert p2["Attempts"] == 0 and p2["Sent"] == 0, p2
            time.sleep(4)
            assert _probes(h2) == p2
            later = _probes(h1)
            assert later["Sent"] == ph["Sent"] and later["Attempts"] == ph["Attempts"], later
            assert later["SocketsOpen"] <= 1, later  # the winner only; the others closed
            assert h1.peer("h2")["CurAddr"] == ""
        except BaseException:
            for n in nodes.values():
                print(f"--- {n.name} ---\n{n.log()[-3000:]}", file=sys.stderr)
            raise
