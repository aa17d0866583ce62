"""Acceptance (issue #18 goal 3): meshscaled nodes go direct over IPv6 through stateful firewalls.

Two nodes each sit behind a HARD (symmetric) IPv4 NAT whose LAN also has a routed IPv6 prefix
behind a stateful firewall (lab/v6.py: replies in, unsolicited inbound dropped, no NAT66). Over
IPv4 the pair could only relay; with IPv6 each learns its own global address (interface and
STUN over IPv6 to the lab DERP's IPv6 address), advertises it to control, and disco pings from
both sides open both firewalls, so the pair goes direct over IPv6. `meshscale status` shows
the IPv6 endpoint; `meshscale netcheck` says IPv6 yes with the global address and an IPv6 DERP
latency (STUN answered over IPv6), while a v4-only neighbour says no and advertises no IPv6.
"""

from __future__ import annotations

import ipaddress
import json
import time
from pathlib import Path

import pytest

from meshscale.lab import Lab, NatKind
from meshscale.lab.meshnet import MeshNet, wait_direct
from meshscale.lab.v6 import add_v6_host, enable_v6_lan, firewall_drops

pytestmark = pytest.mark.lab

DIRECT_DEADLINE = 20.0  # seconds of traffic before the direct path must show


def _addr_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text.rpartition(":")[0].strip("[]"))


def test_v6_direct_through_firewalls_behind_hard_v4_nats(need_lab: None, tmp_path: Path) -> None:
    with Lab(hint="v6n", workdir=tmp_path / "lab") as lab:
        net = MeshNet(lab, tmp_path / "net")
        net.start_control()
        hosts = {}
        for name in ("v6a", "v6b"):
            router = lab.add_nat(f"{name}r", NatKind.HARD)
            enable_v6_lan(router)
            hosts[name] = lab.add_private_host(name, behind=router)
            add_v6_host(hosts[name])
        # A v4-only neighbour of v6a (same router, no IPv6 address): netcheck must say so.
        hosts["v4c"] = lab.add_private_host("v4c", behind=hosts["v6a"].behind)
        nodes = {name: net.add_node(name, host, wait=False) for name, host in hosts.items()}
        a, b, c = nodes["v6a"], nodes["v6b"], nodes["v4c"]
        try:
            net.up_all([a, b, c])
            ip_b = b.ip4()
            a.host.spawn(["ping", "-q", "-i", "0.2", "-c", "150", ip_b], log_name="ping-a-b")
            peer = wait_direct(lambda: a.peer(b.name), time.monotonic() + DIRECT_DEADLINE)
            assert peer.get("CurAddr"), f"no direct path: {peer}"
            cur = _addr_ip(peer["CurAddr"])
            assert cur == hosts["v6b"].ip6, f"direct path is not b's IPv6 address: {peer}"
            assert peer["Active"] and peer["TxBytes"] > 0 and peer["RxBytes"] > 0
            # b advertised its IPv6 endpoint (local and STUN-mapped are the same: no NAT66).
            assert any(_addr_ip(e) == hosts["v6b"].ip6 for e in peer["Addrs"]), peer
            back = wait_direct(lambda: b.peer(a.name), time.monotonic() + 10)
            assert back.get("CurAddr") and _addr_ip(back["CurAddr"]) == hosts["v6a"].ip6, back
            # The firewalls are real: the first unsolicited ping into a LAN was dropped.
            assert firewall_drops(hosts["v6a"].behind) + firewall_drops(hosts["v6b"].behind) > 0
            table = a.cli("status").stdout
            row = next(line for line in table.splitlines() if " v6b " in f" {line} ")
            assert "direct" in row and f"[{hosts['v6b'].ip6}]" in row, table
            # Our STUN over IPv6 found the global address (netcheck's GlobalV6).
            nc = a.cli("netcheck").stdout
            assert f"IPv6: yes, [{hosts['v6a'].ip6}]:" in nc, nc
            rep = json.loads(a.cli("netcheck", "--format=json").stdout)
            assert rep["IPv6"] and rep["IPv6CanSend"] and rep["OSHasIPv6"], rep
            assert _addr_ip(rep["GlobalV6"]) == hosts["v6a"].ip6, rep
            assert rep["RegionV6Latency"] and all(v > 0 for v in rep["RegionV6Latency"].values())
            # ... and IPv4 is the hard NAT's public address.
            assert _addr_ip(rep["GlobalV4"]) == hosts["v6a"].behind.public_ip, rep
            # The v4-only node: no IPv6 at all, and it does not advertise any.
            rep_c = json.loads(c.cli("netcheck", "--format=json").stdout)
            assert not rep_c["IPv6"] and rep_c["GlobalV6"] == "" and not rep_c["RegionV6Latency"]
            assert rep_c["IPv4"], rep_c
            c_addrs = a.peer("v4c")["Addrs"]
            assert c_addrs and all(_addr_ip(e).version == 4 for e in c_addrs), c_addrs
        except BaseException:
            for n in nodes.values():
                print(f"--- {n.name} ---\n{n.log()[-3000:]}")
            raise
