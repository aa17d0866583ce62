"""The CLI against real meshscaled nodes: ip, whois, netcheck, down/up, logout/up, bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshscale.lab import Lab
from meshscale.lab.meshnet import MeshNet

pytestmark = [pytest.mark.lab, pytest.mark.slow]


def test_cli_verbs_on_real_nodes(need_lab: None, tmp_path: Path) -> None:
    with Lab(hint="ncli", workdir=tmp_path / "lab") as lab:
        net = MeshNet(lab, tmp_path / "net")
        net.start_control()
        a = net.add_node("a", lab.add_public_host("a"))
        b = net.add_node("b", lab.add_public_host("b"))
        try:
            a.up()  # https://ctl.lab: /key verified against the lab CA, ts2021 inside TLS
            b.up()
            ip_a, ip_b = a.ip4(), b.ip4()
            assert a.cli("ip", "-4", "b").stdout.strip() == ip_b
            six = a.cli("ip", "-6").stdout.strip()
            assert six.startswith("fd7a:115c:a1e0:")
            who = a.cli("whois", ip_b).stdout
            assert "b.ms.lab" in who and "lab@meshscale.lab" in who
            nc = a.cli("netcheck").stdout
            assert "UDP: true" in nc and f"IPv4: yes, {a.host.ip}:" in nc, nc
            st = a.status()
            assert st["Self"]["HostName"] == "a" and st["Self"]["DNSName"] == "a.ms.lab."
            assert set(st["TailscaleIPs"]) == {ip_a, six}

            a.cli("down")
            assert ip_a not in a.host.run(["ip", "addr", "show", "ms0"]).stdout
            res = a.cli("status", check=False)
            assert res.returncode == 1
            assert res.stderr.strip().endswith("stopped (run: meshscale up)")
            a.cli("up", "--timeout=20s")  # the login is kept: no key needed
            assert a.ip4() == ip_a
            res = a.host.run(["ping", "-c", "2", "-W", "3", ip_b], check=False, timeout=20)
            assert res.returncode == 0, res.stdout

            six_b = b.cli("ip", "-6").stdout.strip()
            res = a.host.run(["ping", "-6", "-c", "2", "-W", "3", six_b], check=False, timeout=20)
            assert res.returncode == 0, res.stdout + res.stderr

            key = a.status()["Self"]["PublicKey"]
            a.cli("logout")
            assert a.status()["BackendState"] == "NeedsLogin"
            a.up()
            assert a.status()["Self"]["PublicKey"] != key

            bad = a.cli("ping", "--c=x", "b", check=False)
            assert bad.returncode == 2 and bad.stderr.count("\n") == 1
            bad = a.cli("set", "--exit-node=100.64.0.99", check=False)  # no such peer
            assert bad.returncode == 1 and "no node with IP 100.64.0.99" in bad.stderr
        except BaseException:
            print("--- a ---\n" + a.log()[-3000:])
            raise


def test_interactive_up_prints_url_and_waits_for_approval(need_lab: None, tmp_path: Path) -> None:
    import re
    import sys
    import time

    with Lab(hint="nint", workdir=tmp_path / "lab") as lab:
        net = MeshNet(lab, tmp_path / "net")
        net.start_control()
        a = net.add_node("a", lab.add_public_host("a"))
        argv = [sys.executable, "-m", "meshscale.cli.main", "--socket", a.socket, "up",
                f"--login-server={net.control_url}", "--timeout=40s"]  # fmt: skip
        up = a.host.spawn(argv, log_name="up-interactive")
        url = None
        deadline = time.monotonic() + 20
        while url is None and time.monotonic() < deadline:
            m = re.search(r"To authenticate, visit:\s+(\S+/register/\S+)", up.log_text())
            url = m.group(1) if m else None
            time.sleep(0.1)
        assert url is not None, up.log_text()
        time.sleep(0.5)
        assert up.running, "up must wait for the approval"
        assert a.status()["BackendState"] == "NeedsLogin"
        net.approve(url)
        assert up.wait(30) == 0, up.log_text()
        assert "Success." in up.log_text()
        assert a.status()["BackendState"] == "Running"
