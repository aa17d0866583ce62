"""Exit nodes and subnet routers with HA failover, our node and official 1.96.4 clients (#15).

* exit nodes: ``www`` (a lab internet host answering HTTP with the caller's address) sees our
  node n1 as its NAT's address; through an official exit node as that node's NAT's address;
  cleared, as its own again. An official client through **our** exit node: as ours.
* HA: a LAN host (198.51.100.100, no client) behind an official router and one of ours, both
  approved; our node and an official client (both ``--accept-routes``) reach it; ``down`` on
  the router that carries the traffic moves it to the other within 10 s for both.
* bad input: refused with one line, nothing installed (prefs, routes, rules untouched).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from meshscale.lab import Lab, NatKind
from meshscale.lab.meshnet import MeshNet, MeshNode
from meshscale.lab.subnet import (
    LAN_PREFIX,
    add_lan,
    enable_forwarding,
    fetch_whoami,
    serve_whoami,
    wait_whoami,
)

pytestmark = [pytest.mark.lab, pytest.mark.interop, pytest.mark.slow, pytest.mark.timeout(300)]

TS_ENV = {"TS_DEBUG_FIREWALL_MODE": "nftables"}  # the lab has nft, no iptables
EXIT_SWITCH = 15.0  # seconds (the bound)
FAILOVER = 10.0  # seconds


def _need_clients() -> None:
    from meshscale.lab.clients import missing_clients

    if missing_clients("tailscale", "tailscaled"):
        pytest.skip("official clients not cached (scripts/fetch-clients)")


def _up(node: MeshNode, *flags: str) -> None:
    node.cli("up", f"--login-server={node.net.control_url}", f"--authkey={node.net.authkey}",
             f"--hostname={node.name}", "--timeout=30s", *flags, timeout=45)  # fmt: skip


def _approve(net: MeshNet, hostname: str, routes: str) -> None:
    assert net.control is not None
    node = next(n for n in net.control.nodes() if n.get("givenName") == hostname
                or n.get("name") == hostname)  # fmt: skip
    net.control.admin("nodes", "approve-routes", "--identifier", str(node["id"]),
                      "--routes", routes)  # fmt: skip


def _wait(what: str, fn: Any, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = fn()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def _offers_exit(status: dict[str, Any], ip: str) -> bool:
    return any(ip in (p.get("TailscaleIPs") or []) and p.get("ExitNodeOption")
               for p in (status.get("Peer") or {}).values())  # fmt: skip


def test_exit_nodes_both_ways(need_lab: None, tmp_path: Path) -> None:
    from meshscale.lab.tailscale import TailscaleNode

    _need_clients()
    with Lab(hint="rex", workdir=tmp_path / "lab") as lab:
        net = MeshNet(lab, tmp_path / "net")
        net.start_control()
        assert net.ca is not None
        www = lab.add_public_host("www")
        serve_whoami(www)
        nat1, nate, natx, natc = (lab.add_nat(n, NatKind.EASY) for n in ("nat1", "nate", "natx",
                                                                        "natc"))  # fmt: skip
        n1 = net.add_node("n1", lab.add_private_host("n1", nat1))
        x = net.add_node("x", lab.add_private_host("x", natx))
        te_host, tc_host = lab.add_private_host("te", nate), lab.add_private_host("tc", natc)
        enable_forwarding(te_host)
        enable_forwarding(x.host)
        te = TailscaleNode(te_host, "te", ca_cert=net.ca.cert_path, env=TS_ENV)
        tc = TailscaleNode(tc_host, "tc", ca_cert=net.ca.cert_path, env=TS_ENV)
        try:
            te.up(net.control_url, net.authkey, hostname="te", extra_args=["--advertise-exit-node"])
            tc.up(net.control_url, net.authkey, hostname="tc")
            _up(n1)
            _up(x, "--advertise-exit-node")
            _approve(net, "te", "0.0.0.0/0,::/0")
            _approve(net, "x", "0.0.0.0/0,::/0")
            www_ip = str(www.ip)
            assert fetch_whoami(n1.host, www_ip) == str(nat1.ip)  # its own path first

            # Our node uses the official exit node: www sees te's NAT.
            te_ip = te.ip4()
            _wait("te offered as exit node to n1", lambda: _offers_exit(n1.status(), te_ip))
            t0 = time.monotonic()
            n1.cli("set", f"--exit-node={te_ip}")
            took = wait_whoami(n1.host, www_ip, str(nate.ip), EXIT_SWITCH)
            print(f"n1 via official exit node after {took:.1f}s ({time.monotonic() - t0:.1f}s)")
            st = n1.status()
            assert [p["HostName"] for p in st["Peer"].values() if p.get("ExitNode")] == ["te"]
            # Control, DERP and WireGuard are marked and never loop: the tunnel stays up.
            assert n1.cli("ping", "-c", "1", "te", check=False).returncode == 0
            n1.cli("set", "--exit-node=")
            wait_whoami(n1.host, www_ip, str(nat1.ip), EXIT_SWITCH)
            rules = n1.host.run(["ip", "route", "show", "table", "52"]).stdout
            assert "default" not in rules, rules

            # The official client uses our exit node: www sees x's NAT.
            x_ip = x.ip4()
            _wait("x offered as exit node to tc",
                  lambda: any(p.get("ExitNodeOption") for p in tc.peers()
                              if p.get("HostName") == "x"))  # fmt: skip
            assert fetch_whoami(tc_host, www_ip) == str(natc.ip)
            tc.cli("set", f"--exit-node={x_ip}")
            took = wait_whoami(tc_host, www_ip, str(natx.ip), EXIT_SWITCH)
            print(f"official client via our exit node after {took:.1f}s")
            tc.cli("set", "--exit-node=")
            wait_whoami(tc_host, www_ip, str(natc.ip), EXIT_SWITCH)
        except BaseException:
            for n in (n1, x):
                print(f"--- meshscaled {n.name} ---\n" + n.log()[-3000:])
            for t in (te, tc):
                print(f"--- tailscaled {t.name} ---\n" + t.log_text()[-2000:])
            raise
        finally:
            te.stop()
            tc.stop()


def test_ha_subnet_routers_fail_over(need_lab: None, tmp_path: Path) -> None:
    from meshscale.lab.tailscale import TailscaleNode

    _need_clients()
    with Lab(hint="rha", workdir=tmp_path / "lab") as lab:
        net = MeshNet(lab, tmp_path / "net")
        net.start_control()
        assert net.ca is not None
        ra_host, rb_host = lab.add_public_host("ra"), lab.add_public_host("rb")
        lan = add_lan(lab, "lan", [ra_host, rb_host])  # ra: 198.51.100.1, rb: .2
        serve_whoami(lan)
        ra = TailscaleNode(ra_host, "ra", ca_cert=net.ca.cert_path, env=TS_ENV)
        rb = net.add_node("rb", rb_host)
        n = net.add_node("n", lab.add_private_host("n", lab.add_nat("natn", NatKind.EASY)))
        tc = TailscaleNode(lab.add_private_host("tc", lab.add_nat("natc", NatKind.EASY)), "tc",
                           ca_cert=net.ca.cert_path, env=TS_ENV)  # fmt: skip
        lan_ip, route = str(lan.ip), str(LAN_PREFIX)
        via = {str(LAN_PREFIX[1]): "ra", str(LAN_PREFIX[2]): "rb"}
        try:
            ra.up(net.control_url, net.authkey, hostname="ra",
                  extra_args=[f"--advertise-routes={route}"])  # fmt: skip
            _up(rb, f"--advertise-routes={route}")
            _approve(net, "ra", route)
            _approve(net, "rb", route)
            _up(n, "--accept-routes")
            tc.up(net.control_url, net.authkey, hostname="tc", extra_args=["--accept-routes"])
            clients = {"n": n.host, "tc": tc.host}
            seen = {c: _wait(f"{c} reaches the LAN host", lambda h=h: fetch_whoami(h, lan_ip))
                    for c, h in clients.items()}  # fmt: skip
            assert set(seen.values()) <= set(via) and len(set(seen.values())) == 1, seen
            primary = via[seen["n"]]
            listed = net.control.admin("nodes", "list-routes").stdout  # type: ignore[union-attr]
            assert route in listed, listed
            other_ip = next(ip for ip, name in via.items() if name != primary)

            t0 = time.monotonic()
            if primary == "ra":
                ra.down()
            else:
                rb.cli("down")
            took = {c: wait_whoami(h, lan_ip, other_ip, FAILOVER + 5) for c, h in clients.items()}
            total = time.monotonic() - t0
            rounded = json.dumps({k: round(v, 1) for k, v in took.items()})
            print(f"failover from {primary}: {rounded} (both within {total:.1f}s)")
            assert total <= FAILOVER, took

            # The old primary returns: no fail-back. Then the new one goes down: back again.
            if primary == "ra":
                ra.up(net.control_url, net.authkey, hostname="ra",
                      extra_args=[f"--advertise-routes={route}"])  # fmt: skip
            else:
                _up(rb, f"--advertise-routes={route}")
            print(f"old primary back after {time.monotonic() - t0:.1f}s")
            time.sleep(2)
            assert {c: fetch_whoami(h, lan_ip) for c, h in clients.items()} == {
                "n": other_ip, "tc": other_ip}  # fmt: skip
            t0 = time.monotonic()
            if primary == "ra":
                rb.cli("down")
                # down removed everything: table 52, the rules, the netfilter table
                assert not rb.host.run(["ip", "route", "show", "table", "52"]).stdout.strip()
                assert "lookup 52" not in rb.host.run(["ip", "rule"]).stdout
                assert "meshscale" not in rb.host.run(["nft", "list", "tables"]).stdout
            else:
                ra.down()
            first_ip = next(ip for ip, name in via.items() if name == primary)
            for h in clients.values():
                wait_whoami(h, lan_ip, first_ip, FAILOVER + 5)
            assert time.monotonic() - t0 <= FAILOVER
            t0 = time.monotonic()
            _bad_input_refused(n)
            print(f"bad input checked in {time.monotonic() - t0:.1f}s")
        except BaseException:
            for m in (rb, n):
                print(f"--- meshscaled {m.name} ---\n" + m.log()[-3000:])
            for t in (ra, tc):
                print(f"--- tailscaled {t.name} ---\n" + t.log_text()[-2000:])
            if net.control is not None:
                print("--- control ---\n" + net.control.log_text()[-2000:])
            raise
        finally:
            ra.stop()
            tc.stop()


def _bad_input_refused(node: MeshNode) -> None:
    """Each refusal is one line, and nothing changes: prefs, table 52, rules, netfilter."""

    def snapshot() -> tuple[str, ...]:
        run = node.host.run
        prefs = ["curl", "-s", "--unix-socket", node.socket, "http://local/localapi/v0/prefs"]
        return tuple(run(argv).stdout for argv in (
            prefs, ["ip", "route", "show", "table", "52"], ["ip", "rule"],
            ["nft", "list", "ruleset"]))  # fmt: skip

    before = snapshot()
    many = ",".join(f"{0x2000 + i:x}::/16" for i in range(10_000))  # < 128 KiB, one argv word
    for flags, needle in [
        (["--advertise-routes=10.0.0.0/33"], "not an IP prefix"),
        (["--advertise-routes=192.0.2.7/24"], "host bits"),
        ([f"--advertise-routes={many}"], "10000 routes"),
        (["--advertise-routes=10.0.0.0/8,10.1.0.0/16"], "overlap"),
        (["--advertise-routes=100.64.0.0/10"], "tailnet"),
    ]:
        res = node.cli("set", *flags, check=False)
        assert res.returncode != 0 and needle in res.stderr, (flags[0][:60], res.stderr)
        assert res.stderr.count("\n") == 1, res.stderr
    assert snapshot() == before


EXIT_POLICY = """{
  // lab@ may use exit nodes; other@ may reach tailnet nodes but not the internet
  "tagOwners": {"tag:exit": ["lab@"]},
  "autoApprovers": {"exitNode": ["tag:exit"]},
  "acls": [
    {"action": "accept", "src": ["lab@"], "dst": ["autogroup:internet:*", "lab@:*", "tag:exit:*"]},
    {"action": "accept", "src": ["other@"], "dst": ["tag:exit:*", "lab@:*"]},
  ],
}"""


def test_policy_governs_exit_node_use_and_auto_approves(need_lab: None, tmp_path: Path) -> None:
    with Lab(hint="rpo", workdir=tmp_path / "lab") as lab:
        net = MeshNet(lab, tmp_path / "net", {"policy": {"mode": "database"}})
        net.start_control()
        ctl = net.control
        assert ctl is not None
        policy = tmp_path / "policy.hujson"
        policy.write_text(EXIT_POLICY)
        ctl.admin("policy", "set", "-f", str(policy))
        www = lab.add_public_host("www")
        serve_whoami(www)
        natx, nata, natb = (lab.add_nat(n, NatKind.EASY) for n in ("natx", "nata", "natb"))
        x = net.add_node("x", lab.add_private_host("x", natx))
        a = net.add_node("a", lab.add_private_host("a", nata))
        b = net.add_node("b", lab.add_private_host("b", natb))
        enable_forwarding(x.host)
        try:
            x.cli("up", f"--login-server={net.control_url}",
                  f"--authkey={ctl.authkey('lab', tags=('tag:exit',))}", "--hostname=x",
                  "--advertise-exit-node", "--timeout=30s", timeout=45)  # fmt: skip
            _up(a)
            b.cli("up", f"--login-server={net.control_url}", f"--authkey={ctl.authkey('other')}",
                  "--hostname=b", "--timeout=30s", timeout=45)  # fmt: skip
            # autoApprovers: x's exit routes are approved with no admin step
            row = next(n for n in ctl.nodes() if "x" in (n.get("givenName"), n.get("name")))
            approved = row.get("approved_routes", row.get("approvedRoutes")) or []
            assert {"0.0.0.0/0", "::/0"} <= set(approved), row
            x_ip = x.ip4()
            _wait("x offered as exit node to a", lambda: _offers_exit(a.status(), x_ip))
            a.cli("set", f"--exit-node={x_ip}")
            wait_whoami(a.host, str(www.ip), str(natx.ip), EXIT_SWITCH)
            # other@ has no autogroup:internet: control does not offer x to it as exit node
            # (hs#2835, docs/protocol/policy.md §5.3), while x itself, allowed to other@,
            # still answers.
            assert not _offers_exit(b.status(), x_ip)
            listed = b.cli("exit-node", "list", check=False)
            assert x_ip not in listed.stdout, listed.stdout
            assert b.host.run(["ping", "-c", "1", "-W", "3", x_ip], check=False).returncode == 0
        except BaseException:
            for m in (x, a, b):
                print(f"--- meshscaled {m.name} ---\n" + m.log()[-2000:])
            raise
