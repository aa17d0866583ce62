"""Interop (issue #18 goal 3): our meshscaled and an official tailscaled 1.96.4 go direct over IPv6.

Each sits behind a HARD (symmetric) IPv4 NAT whose LAN has a routed IPv6 prefix behind a
stateful firewall (lab/v6.py), so over IPv4 the pair could only relay. Both learn their global
IPv6 address, advertise it to our control server, and disco pings from both sides open both
firewalls: each side's status --json shows the other's IPv6 address as CurAddr.

With both families direct (EASY NATs) and one slowed by 40 ms, both our node and tailscaled
take the faster one: the same betterAddr rule on both ends.
"""

from __future__ import annotations

import ipaddress
import json
import time
from pathlib import Path
from typing import Any

import pytest

from meshscale.lab import Lab, NatKind
from meshscale.lab.meshnet import MeshNet, wait_direct
from meshscale.lab.v6 import add_v6_host, enable_v6_lan, firewall_drops

pytestmark = [pytest.mark.lab, pytest.mark.interop]

DIRECT_DEADLINE = 25.0  # seconds of traffic before the direct path must show


def _addr_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text.rpartition(":")[0].strip("[]"))


def test_meshscaled_and_tailscaled_direct_over_v6_behind_hard_v4_nats(
    need_lab: None, tmp_path: Path
) -> None:
    from meshscale.lab.clients import missing_clients
    from meshscale.lab.tailscale import TailscaleNode

    if missing_clients("tailscale", "tailscaled"):
        pytest.skip("official clients not cached (scripts/fetch-clients)")
    with Lab(hint="v6h", workdir=tmp_path / "lab") as lab:
        net = MeshNet(lab, tmp_path / "net")
        net.start_control()
        assert net.ca is not None
        hosts = {}
        for name in ("m", "t"):
            router = lab.add_nat(f"{name}r", NatKind.HARD)
            enable_v6_lan(router)
            hosts[name] = lab.add_private_host(name, behind=router)
            add_v6_host(hosts[name])
        m = net.add_node("m", hosts["m"])
        t = TailscaleNode(hosts["t"], "t", ca_cert=net.ca.cert_path)
        try:
            m.up()
            t.up("https://ctl.lab", net.authkey, hostname="t", timeout=45)
            t.wait_running(timeout=30)
            assert t.wait_peers(1, timeout=30)[0]["HostName"] == "m"
            ip_m, ip_t = m.ip4(), t.ip4()
            # Traffic both ways starts discovery on both sides.
            m.host.spawn(["ping", "-q", "-i", "0.2", "-c", "150", ip_t], log_name="ping-m-t")
            t.host.spawn(["ping", "-q", "-i", "0.2", "-c", "150", ip_m], log_name="ping-t-m")
            ours = wait_direct(lambda: m.peer("t"), time.monotonic() + DIRECT_DEADLINE)
            assert ours.get("CurAddr"), f"meshscaled: no direct path to t: {ours}"
            assert _addr_ip(ours["CurAddr"]) == hosts["t"].ip6, ours
            # tailscaled advertised its IPv6 endpoint to our control server.
            assert any(_addr_ip(e) == hosts["t"].ip6 for e in ours["Addrs"]), ours
            theirs = wait_direct(lambda: _ts_peer(t.status_json(), "m"), time.monotonic() + 15)
            assert theirs.get("CurAddr"), f"tailscaled: no direct path to m: {theirs}"
            assert _addr_ip(theirs["CurAddr"]) == hosts["m"].ip6, theirs
            assert theirs["RxBytes"] > 0 and theirs["TxBytes"] > 0, theirs
            # The firewalls are real: an unsolicited first packet into a LAN was dropped.
            assert firewall_drops(hosts["m"].behind) + firewall_drops(hosts["t"].behind) > 0
            # tailscale's own netcheck sees IPv6 through our STUN, with its global address.
            nc = json.loads(t.netcheck().stdout)
            assert nc["IPv6"] is True and _addr_ip(nc["GlobalV6"]) == hosts["t"].ip6, nc
        except BaseException:
            print("--- meshscaled ---\n" + m.log()[-3000:])
            print("--- tailscaled ---\n" + t.log_text()[-3000:])
            raise
        finally:
            t.stop()


def _ts_peer(status: dict[str, Any], hostname: str) -> dict[str, Any]:
    for peer in (status.get("Peer") or {}).values():
        if peer.get("HostName") == hostname:
            return dict(peer)
    return {}


@pytest.mark.parametrize("slow", ["v6", "v4"])
def test_meshscaled_and_tailscaled_take_the_faster_family(
    need_lab: None, tmp_path: Path, slow: str
) -> None:
    """Dual stack behind EASY NATs, one family slowed 40 ms on our side (lab/delay.py): both
    our node and tailscaled settle on the other family's direct path."""
    from meshscale.lab.clients import missing_clients
    from meshscale.lab.delay import add_delay
    from meshscale.lab.tailscale import TailscaleNode
    from meshscale.lab.v6 import lan_prefix

    if missing_clients("tailscale", "tailscaled"):
        pytest.skip("official clients not cached (scripts/fetch-clients)")
    with Lab(hint="v6h", workdir=tmp_path / "lab") as lab:
        net = MeshNet(lab, tmp_path / "net")
        net.start_control()
        assert net.ca is not None
        hosts, routers = {}, {}
        for name in ("m", "t"):
            routers[name] = lab.add_nat(f"{name}r", NatKind.EASY)
            enable_v6_lan(routers[name])
            hosts[name] = lab.add_private_host(name, behind=routers[name])
            add_v6_host(hosts[name])
        if slow == "v6":
            add_delay(hosts["m"], 0.040, [lan_prefix(routers["t"])])
            want_t, want_m = routers["t"].public_ip, routers["m"].public_ip
        else:
            add_delay(hosts["m"], 0.040, [ipaddress.IPv4Network(f"{routers['t'].public_ip}/32")])
            want_t, want_m = hosts["t"].ip6, hosts["m"].ip6
        m = net.add_node("m", hosts["m"])
        t = TailscaleNode(hosts["t"], "t", ca_cert=net.ca.cert_path)
        try:
            m.up()
            t.up("https://ctl.lab", net.authkey, hostname="t", timeout=45)
            t.wait_running(timeout=30)
            ip_m, ip_t = m.ip4(), t.ip4()
            m.host.spawn(["ping", "-q", "-i", "0.2", "-c", "150", ip_t], log_name="ping-m-t")
            t.host.spawn(["ping", "-q", "-i", "0.2", "-c", "150", ip_m], log_name="ping-t-m")
            ours = _wait_cur(lambda: m.peer("t"), want_t, DIRECT_DEADLINE)
            assert _cur(ours) == want_t, f"{slow} slowed: meshscaled's path is not {want_t}: {ours}"
            theirs = _wait_cur(lambda: _ts_peer(t.status_json(), "m"), want_m, 15)
            assert _cur(theirs) == want_m, f"{slow} slowed: tailscaled's path is not {want_m}"
        except BaseException:
            print("--- meshscaled ---\n" + m.log()[-3000:])
            print("--- tailscaled ---\n" + t.log_text()[-3000:])
            raise
        finally:
            t.stop()


def _cur(peer: dict[str, Any]) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    return _addr_ip(peer["CurAddr"]) if peer.get("CurAddr") else None


def _wait_cur(get_peer: Any, want: object, seconds: float) -> dict[str, Any]:
    deadline = time.monotonic() + seconds
    peer: dict[str, Any] = {}
    while time.monotonic() < deadline:
        peer = get_peer()
        if _cur(peer) == want:
            break
        time.sleep(0.5)
    return peer
