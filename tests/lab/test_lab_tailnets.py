"""Lab: two tailnets on one control server, with official tailscaled 1.96.4 (issue #16
part 1). Tailnet ``default`` has alice's a1 and a2; tailnet ``acme`` (its own base domain
acme.lab) has bob's b1. No policies. a1 sees a2 only, b1 sees nobody, each is named under
its own tailnet's domain, and a1 cannot ping b1. (Sharing across them: test_lab_sharing.)"""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = [pytest.mark.lab, pytest.mark.interop, pytest.mark.slow]


def test_two_tailnets_do_not_see_each_other(tmp_path: Path) -> None:
    from tests.control.test_app_tailscaled import control_lab

    from meshscale.lab.tailscale import join_tailscaled

    with control_lab(tmp_path, "tnt") as (lab, ca, authkey, srv):
        srv.admin("tailnets", "create", "acme", "--base-domain", "acme.lab")
        srv.admin("users", "create", "bob", "--tailnet", "acme")
        bkey = srv.admin_json("preauthkeys", "create", "--user", "bob", "--reusable")
        bkey = bkey["preAuthKey"]["key"] if "preAuthKey" in bkey else bkey["key"]
        a1, a2 = join_tailscaled([lab.add_public_host(n) for n in ("a1", "a2")], ca, srv,
                                 authkey, timeout=45)  # fmt: skip
        (b1,) = join_tailscaled([lab.add_public_host("b1")], ca, srv, bkey, timeout=45)
        try:
            sa, sb = a1.status_json(), b1.status_json()
            assert [p["HostName"] for p in (sa.get("Peer") or {}).values()] == ["a2"], sa
            assert not sb.get("Peer"), sb
            assert sa["Self"]["DNSName"] == "a1.ts.lab."
            assert sb["Self"]["DNSName"] == "b1.acme.lab.", sb["Self"]
            res = a1.ping(b1.ip4(), args=["--c=1", "--timeout=2s"], timeout=15)
            assert "pong" not in res.stdout, res.stdout
            rows = srv.admin_json("nodes", "list", "--tailnet", "acme")
            assert [r["given_name"] for r in rows] == ["b1"], rows
        finally:
            for node in (a1, a2, b1):
                node.stop()
