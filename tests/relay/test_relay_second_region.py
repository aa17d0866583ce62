"""Acceptance (issue #4): official tailscaled 1.96.4 nodes behind UDP-blocking NATs talk
through a standalone ``meshscale-derp`` that is a SECOND region of the DERP map.

``meshscale-control serve`` keeps its embedded DERP region 900 and gets region 901 (the
standalone relay) from a ``derp.paths`` map file. Region 900 is advertised on a second
address of the control host, which both clients reject with nftables: control traffic still
flows, but the only DERP they can reach is region 901, so it must become their home and
carry every packet between them.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from ipaddress import IPv4Address
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from meshscale.relay.app import derp_region

if TYPE_CHECKING:
    from meshscale.lab import Host, LabCA, Proc
    from meshscale.lab.tailscale import TailscaleNode

pytestmark = [pytest.mark.lab, pytest.mark.interop, pytest.mark.slow]

EMBEDDED_ID, EMBEDDED_CODE = 900, "lab"
SECOND_ID, SECOND_CODE = 901, "second"
DERP_NAME = "derp2.lab"
# Region 900's advertised address: an alias on the control host, outside the lab's
# sequential public allocations (203.0.113.2, .3, ...).
EMBEDDED_DERP_IP = IPv4Address("203.0.113.250")


@pytest.fixture
def need_tailscaled() -> None:
    from meshscale.lab.clients import missing_clients

    if os.geteuid() != 0:
        pytest.skip("lab tests need root")
    if missing_clients("tailscale", "tailscaled"):
        pytest.skip("official clients not cached (scripts/fetch-clients)")


def _spawn_standalone_derp(host: Host, ca: LabCA, certdir: Path) -> Proc:
    """meshscale-derp on `host` as DERP_NAME on :443 with a lab CA certificate; debug
    metrics on 127.0.0.1:8081. Clients are admitted by the control server's POST /verify
    (derper's ``--verify-client-url``), failing closed."""
    certdir.mkdir()
    cert, key = ca.issue([DERP_NAME], [host.ip])
    shutil.copy(cert, certdir / f"{DERP_NAME}.crt")
    shutil.copy(key, certdir / f"{DERP_NAME}.key")
    argv = [sys.executable, "-m", "meshscale.relay.main", "-a", ":443", "-hostname", DERP_NAME,
            "-certdir", str(certdir), "--debug-addr", "127.0.0.1:8081",
            "--verify-client-url", "https://ctl.lab/verify",
            "--verify-client-url-fail-open=false"]  # fmt: skip
    return host.spawn(argv, log_name="derp2", env={"SSL_CERT_FILE": str(ca.cert_path)})


def _wait_https(host: Host, url: str, ca: LabCA, proc: Proc, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.running:
        cmd = ["curl", "-sf", "--max-time", "2", "--cacert", str(ca.cert_path), url]
        if host.run(cmd, check=False, timeout=10.0).returncode == 0:
            return
        time.sleep(0.2)
    raise AssertionError(f"{url} did not answer:\n{proc.log_text()[-3000:]}")


def _block(host: Host, ip: IPv4Address) -> None:
    """`host` cannot reach `ip`: TCP is reset, everything else dropped (also the ICMP echo
    tailscaled's netcheck measures region latency with when UDP is blocked)."""
    rules = (
        "table inet blk {\n chain out {\n  type filter hook output priority 0;\n"
        f"  ip daddr {ip} meta l4proto tcp reject with tcp reset\n"
        f"  ip daddr {ip} drop\n }}\n}}\n"
    )
    host.run(["nft", "-f", "-"], input=rules)


def _wait_home(node: TailscaleNode, code: str, timeout: float = 60.0) -> dict[str, Any]:
    """`node`'s status once Self's home relay is `code` (bounded); the last status anyway."""
    deadline = time.monotonic() + timeout
    status = node.status_json()
    while time.monotonic() < deadline and status["Self"].get("Relay") != code:
        time.sleep(0.5)
        status = node.status_json()
    return status


def test_tailscaled_ping_through_standalone_derp_as_second_region(
    tmp_path: Path, need_tailscaled: None
) -> None:
    from meshscale.lab import Lab, LabCA, NatKind
    from meshscale.lab.control import ControlServer
    from meshscale.lab.tailscale import TailscaleNode

    with Lab(hint="r2r", workdir=tmp_path / "lab") as lab:
        ca = LabCA(tmp_path / "ca")
        ctl, d2 = lab.add_public_host("ctl"), lab.add_public_host("derp2")
        assert EMBEDDED_DERP_IP not in (ctl.ip, d2.ip)
        ctl.run(["ip", "addr", "add", f"{EMBEDDED_DERP_IP}/24", "dev", "eth0"])
        lab.add_hosts_entry(DERP_NAME, d2.ip)
        derp = _spawn_standalone_derp(d2, ca, tmp_path / "derp2-certs")
        _wait_https(d2, f"https://{DERP_NAME}/derp/probe", ca, derp)

        second = derp_region(SECOND_ID, SECOND_CODE, "Second DERP", DERP_NAME, ipv4=str(d2.ip),
                             node_name="901a")  # fmt: skip
        map_file = tmp_path / "derpmap.yaml"
        map_file.write_text(yaml.safe_dump({"regions": {SECOND_ID: second}}))
        srv = ControlServer(
            ctl,
            ca,
            config={
                "derp": {
                    "server": {"ipv4": str(EMBEDDED_DERP_IP), "ipv6": ""},
                    "paths": [str(map_file)],
                }
            },
        )
        authkey = srv.authkey()
        # Region 900 is live on its advertised address (for hosts that do not block it).
        probe = d2.run(["curl", "-sf", "--max-time", "5", "--cacert", str(ca.cert_path),
                        "--resolve", f"{srv.name}:443:{EMBEDDED_DERP_IP}",
                        f"{srv.url}/derp/probe"], check=False, timeout=15.0)  # fmt: skip
        assert probe.returncode == 0, probe.stderr + srv.log_text()[-2000:]

        hosts = [
            lab.add_private_host(name, behind=lab.add_nat(f"r{name}", NatKind.UDP_BLOCK))
            for name in ("n1", "n2")
        ]
        for host in hosts:
            _block(host, EMBEDDED_DERP_IP)
            # Control stays reachable on its own address.
            res = host.run(["curl", "-sf", "--max-time", "5", "--cacert", str(ca.cert_path),
                            f"{srv.url}/health"], check=False, timeout=15.0)  # fmt: skip
            assert res.returncode == 0, res.stderr
        nodes = []
        for host in hosts:
            node = TailscaleNode(host, host.name, ca_cert=ca.cert_path)
            nodes.append(node)
            node.up(srv.url, authkey, hostname=host.name, timeout=60)
        for node in nodes:
            node.wait_running(timeout=30)

        # Both regions are in the map the clients got.
        derp_map = nodes[0].cli("debug", "derp-map", timeout=15.0).stdout
        assert f'"RegionCode": "{EMBEDDED_CODE}"' in derp_map, derp_map
        assert f'"RegionCode": "{SECOND_CODE}"' in derp_map, derp_map

        for node in nodes:
            status = _wait_home(node, SECOND_CODE)
            assert status["Self"].get("Relay") == SECOND_CODE, status["Self"]

        ips = [node.ip4() for node in nodes]
        res = nodes[0].ping(ips[1], args=["--c=20", "--timeout=5s"], timeout=150)
        out = res.stdout + res.stderr
        logs = derp.log_text()[-2000:] + srv.log_text()[-2000:]
        assert "pong from n2" in out, out + logs
        assert f"via DERP({SECOND_CODE})" in out, out
        icmp = hosts[1].run(["ping", "-c", "3", "-W", "5", ips[0]], check=False, timeout=40)
        assert icmp.returncode == 0, icmp.stdout + icmp.stderr

        status = nodes[0].status_json()
        peer = next(p for p in status["Peer"].values() if p["HostName"] == "n2")
        assert peer.get("Relay") == SECOND_CODE, peer
        assert status["Self"].get("Relay") == SECOND_CODE, status["Self"]

        # The standalone relay carried the packets; both clients are connected to it.
        m = d2.run(["curl", "-sf", "http://127.0.0.1:8081/debug/metrics"], check=False).stdout
        assert _metric(m, "derp_clients") >= 2, m
        assert _metric(m, "derp_packets_relayed_total") > 0, m
        for node in nodes:
            node.stop()


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == name:
            return float(parts[1])
    return 0.0
