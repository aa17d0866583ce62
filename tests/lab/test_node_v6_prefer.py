"""Issue #18 goal 3: a dual-stack pair picks its direct path by latency, as tailscale does.

Two meshscaled nodes behind EASY IPv4 NATs whose LANs also have routed IPv6 (lab/v6.py): both
a direct IPv4 path (through the NATs) and a direct IPv6 path exist. One family is slowed by
40 ms on a's side (lab/delay.py: the lab kernel has no sch_netem, so a user-space TUN delay on
the routes to b's addresses of that family); each node's best path (status --json CurAddr) is
then the other family, from both sides. Upstream betterAddr's +10 points for IPv6 would only
keep a path up to ~10 % slower, never 40 ms on a sub-millisecond lab link.
"""

from __future__ import annotations

import ipaddress
import time
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any

import pytest

from meshscale.lab import Lab, NatKind
from meshscale.lab.delay import add_delay
from meshscale.lab.meshnet import MeshNet
from meshscale.lab.v6 import add_v6_host, enable_v6_lan, lan_prefix

pytestmark = pytest.mark.lab

DELAY = 0.040  # seconds added to one family's round trip
DEADLINE = 25.0  # seconds of traffic before the expected path must show


def _cur_ip(peer: dict[str, Any]) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    cur = peer.get("CurAddr") or ""
    return ipaddress.ip_address(cur.rpartition(":")[0].strip("[]")) if cur else None


def _wait_cur(get_peer: Any, want: object, deadline: float) -> dict[str, Any]:
    peer: dict[str, Any] = {}
    while time.monotonic() < deadline:
        peer = get_peer()
        if _cur_ip(peer) == want:
            break
        time.sleep(0.5)
    return peer


@pytest.mark.parametrize("slow", ["v6", "v4"])
def test_dual_stack_pair_takes_the_faster_family(need_lab: None, tmp_path: Path, slow: str) -> None:
    with Lab(hint="v6h", workdir=tmp_path / "lab") as lab:
        net = MeshNet(lab, tmp_path / "net")
        net.start_control()
        hosts, routers = {}, {}
        for name in ("a", "b"):
            routers[name] = lab.add_nat(f"{name}r", NatKind.EASY)
            enable_v6_lan(routers[name])
            hosts[name] = lab.add_private_host(name, behind=routers[name])
            add_v6_host(hosts[name])
        if slow == "v6":
            delayed = add_delay(hosts["a"], DELAY, [lan_prefix(routers["b"])])
            want_b, want_a = routers["b"].public_ip, routers["a"].public_ip
            slow_target = str(lan_prefix(routers["b"])[1])  # r2's own LAN address
        else:
            delayed = add_delay(hosts["a"], DELAY, [IPv4Network(f"{routers['b'].public_ip}/32")])
            want_b, want_a = hosts["b"].ip6, hosts["a"].ip6
            slow_target = str(routers["b"].public_ip)
        nodes = {name: net.add_node(name, host, wait=False) for name, host in hosts.items()}
        a, b = nodes["a"], nodes["b"]
        try:
            net.up_all([a, b])
            a.host.spawn(["ping", "-q", "-i", "0.2", "-c", "150", b.ip4()], log_name="ping-a-b")
            peer = _wait_cur(lambda: a.peer("b"), want_b, time.monotonic() + DEADLINE)
            assert _cur_ip(peer) == want_b, f"{slow} slowed: a's path to b is not {want_b}: {peer}"
            back = _wait_cur(lambda: b.peer("a"), want_a, time.monotonic() + 10)
            assert _cur_ip(back) == want_a, f"{slow} slowed: b's path to a is not {want_a}: {back}"
            # Both families were candidates: b advertised a v4 and a v6 endpoint.
            fams = {ipaddress.ip_address(e.rpartition(":")[0].strip("[]")).version
                    for e in peer["Addrs"]}  # fmt: skip
            assert fams == {4, 6}, peer["Addrs"]
            # The slowed family really is slow: a's plain ping to b's router over it.
            assert delayed.running, delayed.log_text()
            out = a.host.run(["ping", "-c", "3", "-W", "2", slow_target], check=False).stdout
            rtt_min = float(out.rpartition("=")[2].split("/")[0])
            assert rtt_min >= DELAY * 1000 * 0.9, out
            # The choice holds (heartbeats keep the faster path trusted).
            time.sleep(3.0)
            assert _cur_ip(a.peer("b")) == want_b
        except BaseException:
            for n in nodes.values():
                print(f"--- {n.name} ---\n{n.log()[-3000:]}")
            raise
