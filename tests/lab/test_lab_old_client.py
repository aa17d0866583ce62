"""Client range: the oldest official client we accept (1.78.1, capability version 109) and
1.96.4 on one meshscale tailnet.

Both sit behind hard NATs (random source ports), so no direct path forms and every packet
goes through the DERP relay: 1.78.1 finds 1.96.4's relay region only in the legacy
``"DERP": "127.3.3.40:<region>"`` string the control server adds for clients older than
capability version 111 (v1.80), and 1.96.4 finds 1.78.1's in ``HomeDERP``.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from meshscale.lab import Lab, NatKind
from meshscale.lab.clients import OLDEST_TAILSCALE_VERSION, missing_clients
from meshscale.lab.meshnet import MeshNet
from meshscale.lab.tailscale import TailscaleNode

pytestmark = [pytest.mark.lab, pytest.mark.interop, pytest.mark.slow, pytest.mark.timeout(240)]


def test_oldest_official_client_and_newest_ping_both_ways(need_lab: None, tmp_path: Path) -> None:
    old = OLDEST_TAILSCALE_VERSION
    if missing_clients("tailscale", "tailscaled") or missing_clients(
        "tailscale", "tailscaled", version=old
    ):
        pytest.skip("official clients not cached (scripts/fetch-clients)")
    with Lab(hint="old", workdir=tmp_path / "lab") as lab:
        net = MeshNet(lab, tmp_path / "net")
        net.start_control()
        assert net.ca is not None
        hosts = [lab.add_private_host(n, lab.add_nat(f"r{n}", NatKind.HARD)) for n in ("o", "n")]
        o = TailscaleNode(hosts[0], "o", ca_cert=net.ca.cert_path, version=old)
        n = TailscaleNode(hosts[1], "n", ca_cert=net.ca.cert_path)
        try:
            assert o.cli("version").stdout.splitlines()[0] == old
            o.up(net.control_url, net.authkey, hostname="o", timeout=45)
            n.up(net.control_url, net.authkey, hostname="n", timeout=45)
            o.wait_running(timeout=30)
            n.wait_running(timeout=30)
            assert o.wait_peers(1, timeout=30)[0]["HostName"] == "n"
            assert n.wait_peers(1, timeout=30)[0]["HostName"] == "o"
            # Each knows the other's relay region (1.78.1 from the legacy string).
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and not (
                o.peers()[0].get("Relay") and n.peers()[0].get("Relay")
            ):
                time.sleep(0.3)
            assert o.peers()[0].get("Relay") and n.peers()[0].get("Relay")

            ip_o, ip_n = o.ip4(), n.ip4()
            for src, dst, name in ((o, ip_n, "n"), (n, ip_o, "o")):
                res = src.ping(dst, args=["--c=5", "--until-direct=false", "--timeout=5s"],
                               timeout=60)  # fmt: skip
                assert f"pong from {name}" in res.stdout, res.stdout + res.stderr
                assert "via DERP" in res.stdout, res.stdout
            for src_host, dst in ((o.host, ip_n), (n.host, ip_o)):
                out = src_host.run(["ping", "-c", "3", "-W", "3", dst], check=False, timeout=20)
                assert " 0% packet loss" in out.stdout, out.stdout
        except BaseException:
            print(f"--- tailscaled {old} ---\n" + o.log_text()[-4000:])
            print("--- tailscaled new ---\n" + n.log_text()[-3000:])
            raise
        finally:
            o.stop()
            n.stop()
