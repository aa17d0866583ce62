"""Interop: our magicsock/disco (inside meshscaled) against the official tailscaled 1.96.4.

One tailnet on our control server (with its DERP region and STUN) in the network lab: a
meshscaled node and an official tailscaled node, behind a pair of NAT kinds. ``tailscale
ping`` from the official client uses disco Pings and only reports a direct path after our
Pongs validate it (docs/protocol/derp-disco-stun.md §9.3); the reverse direction is read from our
own status. Hard NATs on both sides, or UDP blocked on one, must stay on DERP and still answer.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.lab, pytest.mark.interop, pytest.mark.slow]

DIRECT_DEADLINE = 30.0  # seconds of pinging before a direct path must show
VIA_UDP = re.compile(r"pong from m .* via (\d+\.\d+\.\d+\.\d+|\[[0-9a-f:]+\]):\d+")


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "lab tests need root (network namespaces)"
    for tool in ("ip", "nft", "sysctl"):
        if shutil.which(tool) is None:
            return f"lab tests need the {tool!r} command"
    try:
        from meshscale.lab.clients import client_path

        client_path("tailscaled")
    except Exception as exc:  # not fetched (scripts/fetch-clients)
        return f"official tailscaled unavailable: {exc}"
    return None


def _metrics(t: object) -> dict[str, int]:
    """The official client's clientmetrics (``tailscale debug metrics``)."""
    out = t.cli("debug", "metrics", check=False, timeout=10).stdout  # type: ignore[attr-defined]
    found: dict[str, int] = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and not line.startswith("#") and parts[1].isdigit():
            found[parts[0]] = int(parts[1])
    return found


CASES = [
    ("public", "public", True),
    ("easy", "easy", True),
    ("easy", "public", True),
    ("public", "hard", True),
    ("hard", "hard", False),
    ("blocked", "public", False),
]


@pytest.mark.parametrize(("ours", "theirs", "direct"), CASES, ids=[f"{a}-{b}" for a, b, _ in CASES])
def test_official_client_pings_us(ours: str, theirs: str, direct: bool, tmp_path: Path) -> None:
    reason = _skip_reason()
    if reason is not None:
        pytest.skip(reason)
    from meshscale.lab import Lab, NatKind, cleanup_stale
    from meshscale.lab.meshnet import MeshNet
    from meshscale.lab.tailscale import TailscaleNode

    kinds = {"easy": NatKind.EASY, "hard": NatKind.HARD, "blocked": NatKind.UDP_BLOCK}
    cleanup_stale()
    with Lab(hint="msi", workdir=tmp_path / "lab") as lab:

        def host(name: str, kind: str):  # type: ignore[no-untyped-def]
            if kind == "public":
                return lab.add_public_host(name)
            return lab.add_private_host(name, lab.add_nat(f"r{name}", kinds[kind]))

        net = MeshNet(lab, tmp_path / "net")
        net.start_control()
        assert net.ca is not None
        m = net.add_node("m", host("m", ours))
        t = TailscaleNode(host("t", theirs), "t", ca_cert=net.ca.cert_path)
        try:
            m.up()
            t.up(login_server=net.control_url, authkey=net.authkey, hostname="t")
            t.wait_peers(1, timeout=30.0)
            m_ip = m.ip4()
            deadline = time.monotonic() + DIRECT_DEADLINE
            out = ""
            while time.monotonic() < deadline:
                res = t.cli("ping", "-c", "10", "--timeout", "3s", m_ip, check=False, timeout=60)
                out = res.stdout
                if VIA_UDP.search(out) or not direct:
                    break
            assert "pong from m" in out, out
            via_direct = VIA_UDP.search(out)
            assert bool(via_direct) is direct, out
            if not direct:
                assert "via DERP(" in out, out
            # Our side: the official client's pings and pongs gave us a path too.
            if direct:
                while time.monotonic() < deadline and not m.peer("t").get("CurAddr"):
                    t.cli("ping", "-c", "2", m_ip, check=False, timeout=30)
                assert m.peer("t").get("CurAddr"), m.peer("t")
            else:
                assert not m.peer("t").get("CurAddr")
        except BaseException:
            print(f"--- meshscaled ---\n{m.log()[-3000:]}")
            print(f"--- tailscaled ---\n{t.log_text()[-3000:]}")
            raise
        finally:
            t.stop()


def test_official_client_accepts_our_call_me_maybe(tmp_path: Path) -> None:
    """We start the traffic (ICMP through our TUN) towards an idle official client behind
    an easy NAT: our CallMeMaybe must be accepted on its side (its client metrics count it,
    and none as bad) and both sides must end up direct."""
    reason = _skip_reason()
    if reason is not None:
        pytest.skip(reason)
    from meshscale.lab import Lab, NatKind, cleanup_stale
    from meshscale.lab.meshnet import MeshNet
    from meshscale.lab.tailscale import TailscaleNode

    cleanup_stale()
    with Lab(hint="msc", workdir=tmp_path / "lab") as lab:
        net = MeshNet(lab, tmp_path / "net")
        net.start_control()
        assert net.ca is not None
        m = net.add_node("m", lab.add_private_host("m", lab.add_nat("rm", NatKind.EASY)))
        t_host = lab.add_private_host("t", lab.add_nat("rt", NatKind.EASY))
        t = TailscaleNode(t_host, "t", ca_cert=net.ca.cert_path)
        try:
            m.up()
            t.up(login_server=net.control_url, authkey=net.authkey, hostname="t")
            t.wait_peers(1, timeout=30.0)
            t_ip = t.ip4()
            m.host.spawn(["ping", "-q", "-i", "0.25", "-c", "160", t_ip], log_name="ping-m-t")
            deadline = time.monotonic() + DIRECT_DEADLINE
            metrics: dict[str, int] = {}
            while time.monotonic() < deadline:
                metrics = _metrics(t)
                # Wait for all three: our side can go direct (its ping answered) a moment
                # before the official client has counted our pong to its own pings.
                if (
                    metrics.get("magicsock_disco_recv_callmemaybe")
                    and metrics.get("magicsock_disco_recv_pong")
                    and m.peer("t").get("CurAddr")
                ):
                    break
                time.sleep(0.5)
            assert metrics.get("magicsock_disco_recv_callmemaybe", 0) >= 1, metrics
            assert metrics.get("magicsock_disco_recv_callmemaybe_bad_disco", 0) == 0
            assert metrics.get("magicsock_disco_recv_callmemaybe_bad_node", 0) == 0
            assert metrics.get("magicsock_disco_recv_pong", 0) >= 1  # our pongs parsed
            assert m.peer("t").get("CurAddr"), m.peer("t")
            mine = next(p for p in t.peers() if p.get("HostName") == "m")
            assert mine.get("CurAddr"), mine
        except BaseException:
            print(f"--- meshscaled ---\n{m.log()[-3000:]}")
            print(f"--- tailscaled ---\n{t.log_text()[-3000:]}")
            raise
        finally:
            t.stop()
