"""Interop: our meshscaled and an official tailscaled 1.96.4 on one meshscale control server.

Both see each other; ``tailscale ping`` gets disco pongs from our node and ``meshscale ping``
gets pongs from tailscaled; ICMP and TCP go through the tunnel both ways; a direct path
forms between the two public hosts.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from meshscale.lab import Lab, NatKind
from meshscale.lab.meshnet import MeshNet

pytestmark = [pytest.mark.lab, pytest.mark.interop, pytest.mark.slow]


def test_meshscaled_and_tailscaled_ping_both_ways(need_lab: None, tmp_path: Path) -> None:
    from meshscale.lab.clients import missing_clients
    from meshscale.lab.tailscale import TailscaleNode

    if missing_clients("tailscale", "tailscaled"):
        pytest.skip("official clients not cached (scripts/fetch-clients)")
    with Lab(hint="nts", workdir=tmp_path / "lab") as lab:
        net = MeshNet(lab, tmp_path / "net")
        net.start_control()
        assert net.ca is not None
        m = net.add_node("m", lab.add_private_host("m", lab.add_nat("rm", NatKind.EASY)))
        t = TailscaleNode(lab.add_public_host("t"), "t", ca_cert=net.ca.cert_path)
        try:
            m.up()
            t.up("https://ctl.lab", net.authkey, hostname="t", timeout=45)
            t.wait_running(timeout=30)
            ip_m, ip_t = m.ip4(), t.ip4()
            assert t.wait_peers(1, timeout=30)[0]["HostName"] == "m"
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and not m.status().get("Peer"):
                time.sleep(0.2)
            assert m.peer("t")["TailscaleIPs"][0] == ip_t

            # Our status --json speaks tailscale's shape: every key we emit exists there too,
            # with a value of the same JSON type.
            ours, theirs = m.status(), t.status_json()
            _same_shape(ours, theirs, "status")
            _same_shape(ours["Self"], theirs["Self"], "Self")
            our_peer = next(iter(ours["Peer"].values()))
            their_peer = next(iter(theirs["Peer"].values()))
            _same_shape(our_peer, their_peer, "Peer")
            assert set(ours["Peer"]) == {t.status_json()["Self"]["PublicKey"]}
            # ... and the keys tailscale always prints, we print too.
            for k in ("CertDomains", "ClientVersion"):
                assert k in ours and k in theirs
            for k in ("PeerAPIURL", "TaildropTarget", "NoFileSharingReason"):
                assert k in our_peer and k in their_peer, k
            # netcheck --format=json: tailscale's keys, latencies as integer nanoseconds.
            our_nc = json.loads(m.cli("netcheck", "--format=json").stdout)
            their_nc = json.loads(t.netcheck().stdout)
            unprinted = set(their_nc) - set(our_nc)
            assert set(our_nc) <= set(their_nc), json.dumps([our_nc, their_nc])
            assert unprinted <= {"GlobalV4Counters", "GlobalV6Counters"}, unprinted
            _same_shape(our_nc, their_nc, "netcheck")
            for rep in (our_nc, their_nc):
                assert all(isinstance(v, int) for v in rep["RegionLatency"].values()), rep

            res = t.ping(ip_m, args=["--c=5", "--until-direct=false", "--timeout=5s"], timeout=60)
            assert "pong from m" in res.stdout, res.stdout + res.stderr
            res = m.cli("ping", "-c", "5", "--until-direct=false", "t", check=False)
            assert "pong from t" in res.stdout, res.stdout + res.stderr

            for src, dst in ((m.host, ip_t), (t.host, ip_m)):
                out = src.run(["ping", "-c", "3", "-W", "3", dst], check=False, timeout=20)
                assert " 0% packet loss" in out.stdout, out.stdout
            t.host.spawn([sys.executable, "-m", "meshscale.lab.echo", "serve", "--tcp", "7000"],
                         log_name="echo-t")  # fmt: skip
            time.sleep(0.3)
            probe = m.host.run([sys.executable, "-m", "meshscale.lab.echo", "probe", "--tcp",
                                f"{ip_t}:7000"], timeout=30)  # fmt: skip
            assert json.loads(probe.stdout)["tcp"][f"{ip_t}:7000"].split()[0] == ip_m

            # With traffic, the two find a direct path through m's easy NAT.
            m.host.spawn(["ping", "-q", "-i", "0.2", "-c", "100", ip_t], log_name="warm")
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and not m.peer("t").get("CurAddr"):
                time.sleep(0.5)
            assert m.peer("t")["CurAddr"], m.peer("t")
            res = t.ping(ip_m, args=["--c=10", "--timeout=5s"], timeout=60)
            assert "pong from m" in res.stdout and "via 203.0.113." in res.stdout, res.stdout
        except BaseException:
            print("--- meshscaled ---\n" + m.log()[-3000:])
            print("--- tailscaled ---\n" + t.log_text()[-3000:])
            raise
        finally:
            t.stop()


def _kind(v: object) -> str:
    return "null" if v is None else type(v).__name__


# meshscale's own status keys, beyond tailscale's (documented in README): hard-NAT probe counters.
MESHSCALE_ONLY = {"status": {"HardNATProbes"}}


def _same_shape(ours: dict, theirs: dict, where: str) -> None:
    for k, v in ours.items():
        if k in MESHSCALE_ONLY.get(where, set()):
            continue
        assert k in theirs, f"{where}.{k} is not a key of tailscale status --json"
        if v is not None and theirs[k] is not None:
            assert _kind(v) == _kind(theirs[k]), f"{where}.{k}: {_kind(v)} vs {_kind(theirs[k])}"
