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
from typing import Any

import pytest

from meshscale.lab import Lab, clients
from meshscale.lab.meshnet import MeshNet, wait_direct
from meshscale.lab.miniupnpd import MINIUPNPD, start_miniupnpd, start_stun
from meshscale.lab.nat import NatKind
from meshscale.lab.tailscale import join_tailscaled

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


def test_mapping_lets_unsolicited_udp_through_the_hard_nat(need_lab: None) -> None:
    """What a peer needs: a packet from the internet to the mapped address reaches the host."""
    if shutil.which(MINIUPNPD) is None:
        pytest.skip("miniupnpd-nftables is not installed (scripts/install)")
    with Lab("pmpu") as lab:
        stun = lab.add_public_host("stun")
        gw = lab.add_nat("gw", NatKind.HARD)
        node = lab.add_private_host("node", gw)
        start_stun(stun)
        upnpd = start_miniupnpd(gw, stun)
        listen = node.spawn([sys.executable, "-c", LISTEN, str(WG_PORT)], log_name="listen")
        argv = [sys.executable, "-m", "meshscale.lab.miniupnpd", "map", "--port", str(WG_PORT)]
        mapper = node.spawn([*argv, "--hold", "8"], log_name="mapper")
        deadline = time.monotonic() + 15
        while "PCP MAP: added mapping" not in upnpd.log_text():
            assert time.monotonic() < deadline and mapper.running, upnpd.log_text()[-2000:]
            time.sleep(0.1)
        send = f"import socket; socket.socket(2, 2).sendto(b'hello', ('{gw.public_ip}', {WG_PORT}))"
        stun.run([sys.executable, "-c", send])
        deadline = time.monotonic() + 5
        while "GOT hello" not in listen.log_text():
            assert time.monotonic() < deadline, listen.log_text()
            time.sleep(0.1)


LISTEN = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.settimeout(20)
data, addr = s.recvfrom(100)
print("GOT", data.decode(), addr, flush=True)
"""


def test_two_meshscaled_behind_two_hard_nats_go_direct_through_mappings(
    need_lab: None, tmp_path: Path
) -> None:
    """Hard NAT to hard NAT is relayed without port mapping; with miniupnpd on both, direct."""
    if shutil.which(MINIUPNPD) is None:
        pytest.skip("miniupnpd-nftables is not installed (scripts/install)")
    with Lab("pmp2") as lab:
        net = MeshNet(lab, tmp_path / "net")
        net.start_control()
        assert net.ctl is not None
        nodes = []
        for name in ("a", "b"):
            gw = lab.add_nat(f"r{name}", NatKind.HARD)
            start_miniupnpd(gw, net.ctl)
            nodes.append(net.add_node(name, lab.add_private_host(name, gw)))
        for n in nodes:
            n.up()
        a, b = nodes
        a.host.spawn(["ping", "-q", "-i", "0.2", "-c", "150", b.ip4()], log_name="ping-a-b")
        deadline = time.monotonic() + 25
        peer: dict[str, object] = {}
        while time.monotonic() < deadline:
            peer = a.peer("b")
            if peer.get("CurAddr"):
                break
            time.sleep(0.5)
        # Through b's mapping: b's router's address with b's own WireGuard port.
        assert peer.get("CurAddr") == f"{lab.hosts['rb'].ip}:{WG_PORT}", (peer, a.log()[-3000:])


def test_official_clients_behind_miniupnpd_go_direct_with_each_other_and_ours(
    need_lab: None, tmp_path: Path
) -> None:
    """The anchor: tailscaled<->tailscaled and meshscaled<->tailscaled, all behind hard NATs."""
    if shutil.which(MINIUPNPD) is None:
        pytest.skip("miniupnpd-nftables is not installed (scripts/install)")
    if (why := clients.skip_reason()) is not None:
        pytest.skip(why)
    with Lab("pmpt") as lab:
        net = MeshNet(lab, tmp_path / "net")
        net.start_control()
        assert net.ctl is not None and net.control is not None
        hosts = {}
        for name in ("m", "t1", "t2"):
            gw = lab.add_nat(f"r{name}", NatKind.HARD)
            start_miniupnpd(gw, net.ctl)
            hosts[name] = lab.add_private_host(name, gw)
        ours = net.add_node("m", hosts["m"])
        ours.up()
        t1, t2 = join_tailscaled([hosts["t1"], hosts["t2"]], net.ca, net.control, net.authkey, 30)
        t1.host.spawn(["ping", "-q", "-i", "0.2", "-c", "150", t2.ip4()], log_name="ping-t1-t2")
        ours.host.spawn(["ping", "-q", "-i", "0.2", "-c", "150", t1.ip4()], log_name="ping-m-t1")
        deadline = time.monotonic() + 30

        def t1_sees_t2() -> dict[str, Any]:
            return next((p for p in t1.peers() if p.get("HostName") == "t2"), {})

        official = wait_direct(t1_sees_t2, deadline)
        mixed = wait_direct(lambda: ours.peer("t1"), deadline)
        assert str(official.get("CurAddr", "")).startswith(f"{lab.hosts['rt2'].ip}:"), official
        assert str(mixed.get("CurAddr", "")).startswith(f"{lab.hosts['rt1'].ip}:"), mixed
