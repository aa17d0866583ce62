"""Port mapping against Debian's miniupnpd-nftables on a lab router in front of a hard NAT.

Our driver (meshscale.node.portmapper) in a host behind the router detects UPnP, NAT-PMP and PCP,
gets a mapping of its WireGuard port (PCP wins), and releases it: miniupnpd's chains are empty.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import pytest

from meshscale.lab import Lab
from meshscale.lab.meshnet import MeshNet
from meshscale.lab.miniupnpd import MINIUPNPD, start_miniupnpd, start_stun
from meshscale.lab.nat import NatKind

pytestmark = [pytest.mark.lab, pytest.mark.slow, pytest.mark.timeout(120)]

WG_PORT = 41641


def test_node_behind_miniupnpd_detects_all_three_and_maps(need_lab: None) -> None:
    if shutil.which(MINIUPNPD) is None:
        pytest.skip("miniupnpd-nftables is not installed (scripts/install)")
    with Lab("pmp") as lab:
        stun = lab.add_public_host("stun")
        gw = lab.add_nat("gw", NatKind.HARD)
        node = lab.add_private_host("node", gw)
        start_stun(stun)
        upnpd = start_miniupnpd(gw, stun)
        argv = [sys.executable, "-m", "meshscale.lab.miniupnpd", "map", "--port", str(WG_PORT)]
        res = node.run(argv, timeout=40)
        out = json.loads(res.stdout)
        log = upnpd.log_text()
        assert out["have"] == {"UPnP": True, "PMP": True, "PCP": True}, (out, log[-3000:])
        assert out["protocol"] == "PCP" and out["mapped"] == f"{gw.public_ip}:{WG_PORT}", out
        assert out["published"] == [out["mapped"], None]  # released on stop
        assert "PCP: UDP port 41641 mapping removed" in upnpd.log_text()
        rules = gw.run(["nft", "list", "chain", "inet", "filter", "prerouting_miniupnpd"]).stdout
        assert "dnat" not in rules, rules


def test_meshscaled_behind_miniupnpd_advertises_its_mapping(need_lab: None, tmp_path: Path) -> None:
    """The real node: netcheck says PortMapping, the mapping is an endpoint, down releases it."""
    if shutil.which(MINIUPNPD) is None:
        pytest.skip("miniupnpd-nftables is not installed (scripts/install)")
    with Lab("pmpn") as lab:
        net = MeshNet(lab, tmp_path / "net")
        net.start_control()
        assert net.ctl is not None  # its embedded STUN (3478) serves miniupnpd too
        gw = lab.add_nat("gw", NatKind.HARD)
        upnpd = start_miniupnpd(gw, net.ctl)
        node = net.add_node("n", lab.add_private_host("n", gw))
        node.up()
        mapped = f"{gw.public_ip}:{WG_PORT}"
        deadline = time.monotonic() + 20
        while True:
            out = node.cli("netcheck").stdout
            addrs = node.status()["Self"].get("Addrs") or []
            if "PortMapping: UPnP, NAT-PMP, PCP\n" in out and mapped in addrs:
                break
            assert time.monotonic() < deadline, (out, addrs, upnpd.log_text()[-2000:])
            time.sleep(0.5)
        rep = json.loads(node.cli("netcheck", "--format=json").stdout)
        assert (rep["UPnP"], rep["PMP"], rep["PCP"]) == (True, True, True)
        node.cli("down")
        deadline = time.monotonic() + 10
        while "mapping removed" not in upnpd.log_text():
            assert time.monotonic() < deadline, upnpd.log_text()[-2000:]
            time.sleep(0.2)
