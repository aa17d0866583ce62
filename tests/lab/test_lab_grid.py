"""The lab's NAT kinds as the official client sees them (tailscale's easy/hard NAT grid).

Official tailscaled 1.96.4 nodes join our control server (with its embedded DERP and STUN) from
behind each kind of lab router; `tailscale netcheck` and `tailscale ping` then show what the
lab offers a real client: UDP and a stable mapping behind EASY, a direct path between two EASY
NATs and from HARD to a public host, DERP only between two HARD NATs and from a UDP-blocked LAN.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from meshscale.lab import Host, Lab, NatKind
from meshscale.lab.clients import clients_dir, missing_clients
from meshscale.lab.control import ControlServer
from meshscale.lab.pki import LabCA
from meshscale.lab.tailscale import TailscaleNode

pytestmark = [pytest.mark.lab, pytest.mark.interop, pytest.mark.slow, pytest.mark.timeout(300)]

# node name -> NAT kind in front of it (None: a public host)
GRID: dict[str, NatKind | None] = {
    "e1": NatKind.EASY,
    "e2": NatKind.EASY,
    "h1": NatKind.HARD,
    "h2": NatKind.HARD,
    "u1": NatKind.UDP_BLOCK,
    "p1": None,
}
DIRECT_RE = re.compile(r"pong from (\S+) \(\S+\) via (\d+\.\d+\.\d+\.\d+):(\d+) in ")
DERP_RE = re.compile(r"pong from (\S+) \(\S+\) via DERP\((\w+)\) in ")


@pytest.fixture(scope="module")
def grid(
    lab_possible: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, TailscaleNode]]:
    missing = missing_clients("tailscale", "tailscaled")
    if missing:
        pytest.skip(f"clients {missing} not in {clients_dir()}: run scripts/fetch-clients")
    tmp = tmp_path_factory.mktemp("grid")
    with Lab(hint="grd", workdir=tmp / "lab") as lab:
        ca = LabCA(tmp / "pki")
        ctl = ControlServer(lab.add_public_host("ctl"), ca)
        key = ctl.authkey()
        hosts: dict[str, Host] = {}
        for name, kind in GRID.items():
            if kind is None:
                hosts[name] = lab.add_public_host(name)
            else:
                hosts[name] = lab.add_private_host(name, behind=lab.add_nat(f"r{name}", kind))
        nodes = {n: TailscaleNode(h, n, ca_cert=ca.cert_path) for n, h in hosts.items()}

        def join(node: TailscaleNode) -> None:
            node.up(ctl.url, key, hostname=node.name, timeout=60)

        with ThreadPoolExecutor(max_workers=len(nodes)) as pool:
            list(pool.map(join, nodes.values()))
        for node in nodes.values():
            node.wait_peers(len(nodes) - 1, timeout=60)
        yield nodes
        for node in nodes.values():
            node.stop()
        ctl.stop()


def _ping(nodes: dict[str, TailscaleNode], src: str, dst: str, count: int) -> str:
    target = nodes[dst].ip4()
    res = nodes[src].ping(target, ["--c", str(count), "--timeout", "3s"], timeout=count * 4 + 30)
    return res.stdout + res.stderr


def _netcheck(node: TailscaleNode) -> dict[str, object]:
    res = node.netcheck()
    assert res.returncode == 0, res.stdout + res.stderr + node.log_text()[-2000:]
    report: dict[str, object] = json.loads(res.stdout)
    return report


def test_netcheck_behind_easy_nat_sees_udp_and_the_router(grid: dict[str, TailscaleNode]) -> None:
    report = _netcheck(grid["e1"])
    router = grid["e1"].host.behind
    assert router is not None
    assert report["UDP"] is True
    assert str(report["GlobalV4"]).split(":")[0] == str(router.public_ip)


def test_netcheck_behind_udp_block_has_no_udp(grid: dict[str, TailscaleNode]) -> None:
    report = _netcheck(grid["u1"])
    assert report["UDP"] is False


def test_two_easy_nats_go_direct(grid: dict[str, TailscaleNode]) -> None:
    out = _ping(grid, "e1", "e2", 20)
    m = DIRECT_RE.search(out)
    assert m, out
    router = grid["e2"].host.behind
    assert router is not None
    assert m.group(2) == str(router.public_ip)


def test_hard_nat_to_public_goes_direct(grid: dict[str, TailscaleNode]) -> None:
    out = _ping(grid, "h1", "p1", 20)
    m = DIRECT_RE.search(out)
    assert m, out
    assert m.group(2) == str(grid["p1"].host.ip)


def test_two_hard_nats_stay_on_derp(grid: dict[str, TailscaleNode]) -> None:
    out = _ping(grid, "h1", "h2", 5)
    assert DERP_RE.search(out), out
    assert not DIRECT_RE.search(out), out


def test_udp_blocked_lan_stays_on_derp(grid: dict[str, TailscaleNode]) -> None:
    out = _ping(grid, "u1", "e1", 5)
    assert DERP_RE.search(out), out
    assert not DIRECT_RE.search(out), out
