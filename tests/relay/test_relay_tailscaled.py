"""Acceptance: official tailscaled 1.96.4 nodes behind UDP-blocking NATs talk through our relay.

The relay is the one embedded in ``meshscale-control serve``, with client verification on
(the control server's node table). UDP cannot leave either node's LAN, so every packet
between them must cross the relay: ``tailscale ping`` must answer via
DERP, ICMP must cross the tunnel, the relay's metrics must count relayed packets, and an
unregistered node key must be refused.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import sys
import textwrap
import time
from collections.abc import Iterator, Sequence
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from meshscale.relay.app import derp_node, derp_region

if TYPE_CHECKING:
    from meshscale.lab import ControlServer, Host, Lab, LabCA, Proc

pytestmark = [pytest.mark.lab, pytest.mark.interop, pytest.mark.slow]

# The embedded relay's metrics (DERP and STUN counters after the control server's own) on a
# debug listener inside the control host's namespace.
METRICS_ADDR = "127.0.0.1:8081"


WHOIS_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    from meshscale.derp.info import ClientInfo
    from meshscale.key import NodePublic
    from meshscale.relay.verify import LocalAPIVerifier

    async def main() -> None:
        v = LocalAPIVerifier(sys.argv[1])
        for text in sys.argv[2:]:
            print(await v(NodePublic.from_text(text), ClientInfo()))
        await v.close()

    asyncio.run(main())
    """
)


@pytest.fixture
def need_tailscaled() -> None:
    from meshscale.lab.clients import skip_reason

    reason = skip_reason("tailscale", "tailscaled")
    if reason is not None:
        pytest.skip(reason)


def _metric(text: str, name: str) -> float:
    m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def _spawn_derper(
    host: Host,
    ca: LabCA,
    name: str,
    ips: Sequence[IPv4Address | IPv6Address],
    certdir: Path,
    extra: Sequence[str],
    env: dict[str, str] | None = None,
    log_name: str = "derper",
) -> Proc:
    """meshscale-derp on `host` as `name` on :443, with a lab CA certificate in `certdir`
    and its debug listener on 127.0.0.1:8081."""
    certdir.mkdir()
    cert, key = ca.issue([name], ips)
    shutil.copy(cert, certdir / f"{name}.crt")
    shutil.copy(key, certdir / f"{name}.key")
    argv = [sys.executable, "-m", "meshscale.relay.main", "-a", ":443", "-hostname", name,
            "-certdir", str(certdir), *extra, "--debug-addr", "127.0.0.1:8081"]  # fmt: skip
    return host.spawn(argv, env=env, log_name=log_name)


def _start_standalone_control(
    ctl: Host, ca: LabCA, tmp_path: Path, region: dict[str, Any]
) -> tuple[ControlServer, str]:
    """meshscale-control on `ctl` as https://ctl.lab without its embedded relay, DERP region
    `region` from a derp.paths file, /verify for the relays; (server, authkey)."""
    from meshscale.lab import ControlServer

    region_file = tmp_path / "derpmap.json"
    region_file.write_text(json.dumps({"Regions": {str(region["RegionID"]): region}}))
    derp = {"server": {"enabled": False}, "paths": [str(region_file)]}
    srv = ControlServer(ctl, ca, config={"derp": derp})
    return srv, srv.authkey()


@contextlib.contextmanager
def _embedded_relay_lab(
    tmp_path: Path, hint: str
) -> Iterator[tuple[Lab, LabCA, Host, ControlServer]]:
    """A lab whose host "ctl" runs meshscale-control (https://ctl.lab, embedded DERP with
    client verification, STUN, metrics on METRICS_ADDR); (lab, ca, ctl host, server)."""
    from meshscale.lab import ControlServer, Lab, LabCA

    with Lab(hint=hint, workdir=tmp_path / "lab") as lab:
        ca = LabCA(tmp_path / "ca")
        ctl = lab.add_public_host("ctl")
        srv = ControlServer(ctl, ca, config={"metrics_listen_addr": METRICS_ADDR})
        yield lab, ca, ctl, srv


def test_tailscaled_behind_udp_blocking_nats_ping_through_our_relay(
    tmp_path: Path, need_tailscaled: None
) -> None:
    from meshscale.lab import NatKind
    from meshscale.lab.tailscale import join_tailscaled

    with _embedded_relay_lab(tmp_path, "rts") as (lab, ca, ctl, srv):
        authkey = srv.authkey()

        def metrics() -> str:
            return ctl.run(["curl", "-sf", f"http://{METRICS_ADDR}/metrics"]).stdout

        hosts = [
            lab.add_private_host(name, behind=lab.add_nat(f"r{name}", NatKind.UDP_BLOCK))
            for name in ("n1", "n2")
        ]
        nodes = join_tailscaled(hosts, ca, srv, authkey, timeout=60)
        ips = [node.ip4() for node in nodes]

        res = nodes[0].ping(ips[1], args=["--c=20", "--timeout=5s"], timeout=120)
        out = res.stdout + res.stderr
        assert "pong from n2" in out, out + srv.log_text()[-3000:]
        assert "via DERP(lab)" in out, out
        icmp = nodes[1].host.run(["ping", "-c", "3", "-W", "5", ips[0]], check=False, timeout=40)
        assert icmp.returncode == 0, icmp.stdout + icmp.stderr

        text = metrics()
        assert _metric(text, "derp_clients") >= 2, text
        assert _metric(text, "derp_packets_relayed_total") > 0, text

        # An unregistered node key is refused (verification is on when embedded).
        probe = nodes[0].host.run(
            [
                sys.executable,
                "-m",
                "meshscale.relay.probe",
                "--timeout",
                "5",
                "recv",
                "https://ctl.lab/derp",
                "--key-seed",
                "07",
            ],
            check=False,
            env={"SSL_CERT_FILE": str(ca.cert_path)},
            timeout=30,
        )
        assert probe.returncode != 0, probe.stdout + probe.stderr
        assert 'derp_login_failures_total{reason="unknown_node"} 1' in metrics()

        # derper's --verify-clients path: the real tailscaled LocalAPI whois answers our
        # LocalAPIVerifier (admit its peer n2, refuse a stranger).
        peer_key = nodes[0].status_json()["Peer"]
        n2_key = next(k for k, p in peer_key.items() if p["HostName"] == "n2")
        check = nodes[0].host.run(
            [
                sys.executable,
                "-c",
                WHOIS_SCRIPT,
                str(nodes[0].socket),
                n2_key,
                "nodekey:" + "ab" * 32,
            ],
            timeout=30,
        )
        assert check.stdout.split() == ["True", "False"], check.stdout + check.stderr
        for node in nodes:
            node.stop()


def test_tailscaled_netcheck_uses_our_stun_behind_easy_nat(
    tmp_path: Path, need_tailscaled: None
) -> None:
    """The official client's netcheck gets its public address from our STUN server."""
    from meshscale.lab import NatKind
    from meshscale.lab.tailscale import TailscaleNode

    with _embedded_relay_lab(tmp_path, "rnc") as (lab, ca, _ctl, srv):
        authkey = srv.authkey()
        nat = lab.add_nat("easy", NatKind.EASY)
        node = TailscaleNode(lab.add_private_host("n1", behind=nat), "n1", ca_cert=ca.cert_path)
        node.up("https://ctl.lab", authkey, hostname="n1", timeout=60)
        report: dict[str, object] = {}
        for _ in range(3):  # bounded retries: the first netcheck may race the map
            res = node.netcheck()
            start = res.stdout.find("{")
            report = json.loads(res.stdout[start:]) if start >= 0 else {}
            if report.get("UDP"):
                break
        assert report.get("UDP") is True, report
        assert str(report.get("GlobalV4", "")).startswith(f"{nat.public_ip}:"), report
        assert report.get("PreferredDERP") == 900, report
        assert "900" in (report.get("RegionV4Latency") or {}), report
        node.stop()


def test_tailscaled_on_two_meshed_standalone_relays(tmp_path: Path, need_tailscaled: None) -> None:
    """n1 and n2 (UDP blocked) sit on different meshscale-derp nodes of one region; their
    packets cross the mesh. TLS with the meta certificate; admission via the verify URL."""
    from meshscale.lab import Lab, LabCA, NatKind
    from meshscale.lab.tailscale import join_tailscaled

    with Lab(hint="rms", workdir=tmp_path / "lab") as lab:
        ctl = lab.add_public_host("ctl")
        d1, d2 = lab.add_public_host("derp1"), lab.add_public_host("derp2")
        for name, host in (("derp1.lab", d1), ("derp2.lab", d2)):
            lab.add_hosts_entry(name, host.ip)  # ctl.lab: ControlServer adds its own
        ca = LabCA(tmp_path / "ca")
        env = {"SSL_CERT_FILE": str(ca.cert_path)}
        psk = tmp_path / "mesh.key"
        psk.write_text(os.urandom(32).hex() + "\n")
        mesh_args = ["--mesh-psk-file", str(psk), "--mesh-with", "derp1.lab,derp2.lab",
                     "--verify-clients", "--verify-client-url", "https://ctl.lab/verify",
                     "--verify-client-url-fail-open=false"]  # fmt: skip
        derpers = [
            _spawn_derper(host, ca, name, [host.ip], tmp_path / name, mesh_args, env, name)
            for name, host in (("derp1.lab", d1), ("derp2.lab", d2))
        ]
        region = derp_region(
            900,
            "lab",
            "Lab DERP",
            "derp1.lab",
            ipv4=str(d1.ip),
            node_name="900a",
            extra_nodes=[derp_node(900, "900b", "derp2.lab", ipv4=str(d2.ip))],
        )
        srv, authkey = _start_standalone_control(ctl, ca, tmp_path, region)

        def metrics(host: object) -> str:
            cmd = ["curl", "-sf", "http://127.0.0.1:8081/debug/metrics"]
            return host.run(cmd, check=False).stdout  # type: ignore[attr-defined]

        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not all(
            _metric(metrics(h), "derp_mesh_peers") == 1 for h in (d1, d2)
        ):
            time.sleep(0.2)
        logs = "\n".join(p.log_text()[-2000:] for p in derpers)
        assert all(_metric(metrics(h), "derp_mesh_peers") == 1 for h in (d1, d2)), logs

        hosts = [
            lab.add_private_host(name, behind=lab.add_nat(f"r{name}", NatKind.UDP_BLOCK))
            for name in ("n1", "n2")
        ]
        # n2 cannot reach derp1, so it homes on the region's second node.
        hosts[1].run(
            ["nft", "-f", "-"],
            input=(
                "table inet blk {\n chain out {\n  type filter hook output priority 0;\n"
                f"  ip daddr {d1.ip} tcp dport 443 reject with tcp reset\n }}\n}}\n"
            ),
        )
        nodes = join_tailscaled(hosts, ca, srv, authkey, timeout=60)
        ips = [node.ip4() for node in nodes]
        res = nodes[0].ping(ips[1], args=["--c=20", "--timeout=5s"], timeout=150)
        out = res.stdout + res.stderr
        assert "pong from n2" in out, out + logs
        assert "via DERP(lab)" in out, out
        m1, m2 = metrics(d1), metrics(d2)
        assert _metric(m1, "derp_clients") >= 2, m1  # n1 + derp2's mesh link
        assert _metric(m2, "derp_clients") >= 2, m2  # n2 + derp1's mesh link
        assert _metric(m1, "derp_packets_forwarded_total") > 0, m1
        assert _metric(m2, "derp_packets_forwarded_total") > 0, m2
        for node in nodes:
            node.stop()


def test_tailscale_debug_derp_finds_no_errors(tmp_path: Path, need_tailscaled: None) -> None:
    """The official client's own DERP checker (`tailscale debug derp`) against a standalone
    meshscale-derp: TLS with the meta certificate, DERP over IPv4 and IPv6, STUN, port 80."""
    from meshscale.lab import Lab, LabCA
    from meshscale.lab.tailscale import TailscaleNode

    with Lab(hint="rdd", workdir=tmp_path / "lab") as lab:
        ctl, d1 = lab.add_public_host("ctl"), lab.add_public_host("derp1")
        lab.add_hosts_entry("derp1.lab", d1.ip)
        assert d1.ip6 is not None
        ca = LabCA(tmp_path / "ca")
        derper = _spawn_derper(
            d1,
            ca,
            "derp1.lab",
            [d1.ip, d1.ip6],
            tmp_path / "certs",
            ["-http-port", "80"],
            log_name="derper",
        )
        region = derp_region(
            900,
            "lab",
            "Lab DERP",
            "derp1.lab",
            ipv4=str(d1.ip),
            ipv6=str(d1.ip6),
            node_name="900a",
            can_port80=True,
        )
        _srv, authkey = _start_standalone_control(ctl, ca, tmp_path, region)
        n1 = TailscaleNode(lab.add_public_host("n1"), "n1", ca_cert=ca.cert_path)
        n1.up("https://ctl.lab", authkey, hostname="n1", timeout=60)
        res = n1.cli("debug", "derp", "900", check=False, timeout=90)
        report = json.loads(res.stdout[res.stdout.find("{") :])
        logs = derper.log_text()[-3000:]
        assert report.get("Errors") in (None, []), json.dumps(report, indent=1) + logs
        info = "\n".join(report.get("Info") or [])
        assert 'Node "derp1.lab" has working IPv4 and IPv6 connectivity' in info, info
        assert 'Successfully established a DERP connection with node "derp1.lab"' in info, info
        assert "returned IPv4 STUN response" in info, info  # the checker only STUNs over IPv4
        warnings = report.get("Warnings") or []
        assert not any("captive portal" in w for w in warnings), warnings
        # The official client found our key in the TLS meta certificate and skipped the 101.
        res = d1.run(["curl", "-sS", "http://127.0.0.1:8081/debug/metrics"], check=False)
        m = res.stdout
        assert _metric(m, "derp_fast_starts_total") >= 1, m + res.stderr + derper.log_text()[-3000:]
        n1.stop()
