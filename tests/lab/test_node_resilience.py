"""Acceptance: what established tailnets survive.

Control stopped -> established peers keep talking; control back -> nodes reconnect (a node
that joins afterwards is seen); meshscaled restarted -> same node key and address, Running
again without ``up``; the node's address changes (roaming) -> traffic recovers within 5 s.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from meshscale.lab import Lab, NatKind
from meshscale.lab.meshnet import MeshNet, MeshNode

pytestmark = [pytest.mark.lab, pytest.mark.slow]

ECHO_PORT = 7000
ROAM_RECOVERY = 5.0  # seconds


def _tcp(src: MeshNode, dst_ip: str, timeout: float = 3.0) -> bool:
    try:
        res = src.host.run(
            [sys.executable, "-m", "meshscale.lab.echo", "probe", "--timeout", str(timeout),
             "--tcp", f"{dst_ip}:{ECHO_PORT}"], timeout=timeout + 10, check=False,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return False
    if res.returncode != 0:
        return False
    return json.loads(res.stdout)["tcp"].get(f"{dst_ip}:{ECHO_PORT}") is not None


def _until(cond, limit: float, step: float = 0.2) -> float | None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        if cond():
            return time.monotonic() - t0
        time.sleep(step)
    return None


def test_control_outage_restart_and_roaming(need_lab: None, tmp_path: Path) -> None:
    with Lab(hint="nres", workdir=tmp_path / "lab") as lab:
        net = MeshNet(lab, tmp_path / "net")
        net.start_control()
        a = net.add_node("a", lab.add_public_host("a"))
        router = lab.add_nat("rb", NatKind.EASY)
        bhost = lab.add_private_host("b", router)
        b = net.add_node("b", bhost)
        nodes = [a, b]
        try:
            a.up()
            b.up()
            ip_a, ip_b = a.ip4(), b.ip4()
            for n in nodes:
                n.host.spawn([sys.executable, "-m", "meshscale.lab.echo", "serve", "--tcp",
                              str(ECHO_PORT)], log_name=f"echo-{n.name}")  # fmt: skip
            assert _until(lambda: _tcp(a, ip_b), 10) is not None
            a.host.spawn(["ping", "-q", "-i", "0.2", "-c", "50", ip_b], log_name="warm")
            assert _until(lambda: bool(a.peer("b").get("CurAddr")), 15) is not None

            # 1. Control (and its embedded DERP) goes away: established peers keep talking.
            net.stop_control()
            # Each probe is a fresh TCP connection; allow it a 3 s window, not one shot.
            assert _until(lambda: _tcp(a, ip_b, timeout=1.0), 3) is not None
            assert _until(lambda: _tcp(b, ip_a, timeout=1.0), 3) is not None
            res = a.cli("ping", "-c", "3", "--until-direct=false", "b")
            assert "pong from b" in res.stdout

            # 2. Control returns (same database and key): a node joining later is seen.
            net.start_control()
            c = net.add_node("c", lab.add_public_host("c"))
            nodes.append(c)
            c.up()
            seen = _until(lambda: "c" in {p["HostName"] for p in a.status()["Peer"].values()}, 20)
            assert seen is not None, a.status()

            # 3. Restarting meshscaled keeps identity and address, and comes back Running.
            key_before = b.status()["Self"]["PublicKey"]
            b.stop()
            b.start()
            assert _until(lambda: b.status()["BackendState"] == "Running", 20) is not None
            st = b.status()
            assert st["Self"]["PublicKey"] == key_before
            assert st["TailscaleIPs"][0] == ip_b
            assert _until(lambda: _tcp(a, ip_b), 15) is not None

            # 4. Roaming: b's LAN address changes under it.
            pinger = a.host.spawn(["ping", "-q", "-i", "0.2", "-c", "200", ip_b], log_name="roam")
            assert _until(lambda: bool(a.peer("b").get("CurAddr")), 15) is not None
            old = str(bhost.ip)
            new = str(router.lan[200])
            bhost.run(["ip", "addr", "del", f"{old}/24", "dev", "eth0"])
            bhost.run(["ip", "addr", "add", f"{new}/24", "dev", "eth0"])
            bhost.run(["ip", "route", "replace", "default", "via", str(router.lan_ip)])
            took = _until(lambda: _tcp(a, ip_b, timeout=1.0), ROAM_RECOVERY + 10)
            print(f"roaming recovery: {took}")
            assert took is not None and took <= ROAM_RECOVERY, f"roaming took {took}"
            pinger.stop()
        except BaseException:
            for n in nodes:
                print(f"--- {n.name} ---\n{n.log()[-3000:]}")
            if net.ctl_proc is not None:
                print("--- control ---\n" + net.ctl_proc.log_text()[-2000:])
            raise
