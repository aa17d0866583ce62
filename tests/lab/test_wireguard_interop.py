"""meshscale-wireguard against Debian's wireguard-go (and itself), configured with real `wg`.

Each test builds two public lab hosts A and B, runs a userspace WireGuard daemon in each and
checks the behaviour a user sees: ping and TCP both ways whichever side initiates, IPv6
inside the tunnel, roaming, `wg show` counters, junk on the UDP port, interface deletion.
"""

from __future__ import annotations

import json
import os
import random
import time

import pytest

from meshscale.lab import Lab
from meshscale.lab.wgpair import WGEnd, connect, have_wireguard_go, start_end

pytestmark = [
    pytest.mark.lab,
    pytest.mark.interop,
    pytest.mark.slow,
    pytest.mark.skipif(not have_wireguard_go(), reason="needs wireguard-go and wg (apt)"),
]


def ping(src: WGEnd, dst_ip: str, count: int = 3, v6: bool = False) -> None:
    argv = ["ping", "-6" if v6 else "-4", "-c", str(count), "-i", "0.2", "-W", "3", dst_ip]
    res = src.host.run(argv, timeout=20, check=False)
    assert res.returncode == 0, f"ping {src.impl}->{dst_ip} failed:\n{res.stdout}{res.stderr}"


def tcp_transfer(lab: Lab, client: WGEnd, server: WGEnd, reverse: bool = False) -> float:
    """iperf3 for 2 s through the tunnel; returns the received bits/s."""
    srv = server.host.spawn(["iperf3", "-s", "-1", "-B", server.tunnel_ip], log_name="iperf-s")
    try:
        time.sleep(0.3)
        argv = ["iperf3", "-c", server.tunnel_ip, "-t", "2", "-J"] + (["-R"] if reverse else [])
        res = client.host.run(argv, timeout=30, check=False)
        assert res.returncode == 0, res.stdout[-2000:] + res.stderr
        report = json.loads(res.stdout)
        return float(report["end"]["sum_received"]["bits_per_second"])
    finally:
        srv.stop()


def dump_peer(end: WGEnd) -> list[str]:
    lines = end.wg("show", end.ifname, "dump").strip().splitlines()
    assert len(lines) == 2, lines
    return lines[1].split("\t")


@pytest.fixture
def two_hosts(lab: Lab):
    return lab.add_public_host("a"), lab.add_public_host("b")


@pytest.mark.parametrize("initiator", ["meshscale", "wireguard-go"])
def test_interop_ping_tcp_both_ways(lab: Lab, two_hosts, initiator: str) -> None:
    a_host, b_host = two_hosts
    ours = start_end(a_host, "meshscale", 1, log_dir=lab.workdir)
    ref = start_end(b_host, "wireguard-go", 2, log_dir=lab.workdir)
    connect(ours, ref)
    first, second = (ours, ref) if initiator == "meshscale" else (ref, ours)
    ping(first, second.tunnel_ip)
    ping(second, first.tunnel_ip)
    assert tcp_transfer(lab, ours, ref) > 1e6
    assert tcp_transfer(lab, ours, ref, reverse=True) > 1e6
    # wg show against ours: latest handshake and transfer counters.
    fields = dump_peer(ours)
    pub, _psk, endpoint, allowed, latest, rx, tx, _keepalive = fields
    assert pub == ref.public_key
    assert endpoint == f"{b_host.ip}:{ref.port}"
    assert int(latest) > time.time() - 60
    assert int(rx) > 1_000_000 and int(tx) > 1_000_000
    assert set(allowed.split(",")) == {f"{ref.tunnel_ip}/32", f"{ref.tunnel_ip6}/128"}
    assert ours.proc.running


def test_interop_ipv6_inside_tunnel(lab: Lab, two_hosts) -> None:
    ours = start_end(two_hosts[0], "meshscale", 1, log_dir=lab.workdir)
    ref = start_end(two_hosts[1], "wireguard-go", 2, log_dir=lab.workdir)
    connect(ours, ref)
    ping(ours, ref.tunnel_ip6, v6=True)
    ping(ref, ours.tunnel_ip6, v6=True)


def test_ours_to_ours(lab: Lab, two_hosts) -> None:
    a = start_end(two_hosts[0], "meshscale", 1, log_dir=lab.workdir)
    b = start_end(two_hosts[1], "meshscale", 2, log_dir=lab.workdir)
    connect(a, b, b_endpoint=False)  # b learns a's endpoint from the handshake
    ping(a, b.tunnel_ip)
    ping(b, a.tunnel_ip)
    ping(a, b.tunnel_ip6, v6=True)
    assert tcp_transfer(lab, a, b) > 1e6
    assert tcp_transfer(lab, a, b, reverse=True) > 1e6


def test_roaming_endpoint_moves(lab: Lab, two_hosts) -> None:
    ours = start_end(two_hosts[0], "meshscale", 1, log_dir=lab.workdir)
    ref = start_end(two_hosts[1], "wireguard-go", 2, log_dir=lab.workdir)
    connect(ours, ref)
    ping(ours, ref.tunnel_ip)
    ours.wg("set", ours.ifname, "listen-port", "9999")
    ping(ours, ref.tunnel_ip)
    endpoints = ref.wg("show", ref.ifname, "endpoints")
    assert f"{two_hosts[0].ip}:9999" in endpoints
    ping(ref, ours.tunnel_ip)
    # And the reference roams too: ours must follow it.
    ref.wg("set", ref.ifname, "listen-port", "9998")
    ping(ref, ours.tunnel_ip)
    assert f"{two_hosts[1].ip}:9998" in ours.wg("show", ours.ifname, "endpoints")


def test_junk_on_the_udp_port_is_dropped(lab: Lab, two_hosts) -> None:
    ours = start_end(two_hosts[0], "meshscale", 1, log_dir=lab.workdir)
    ref = start_end(two_hosts[1], "wireguard-go", 2, log_dir=lab.workdir)
    connect(ours, ref)
    ping(ref, ours.tunnel_ip)
    rnd = random.Random(7)
    junk = [rnd.randbytes(rnd.randrange(0, 1500)) for _ in range(300)]
    # Well-typed but wrong messages too: every type byte, exact handshake sizes, big datagrams.
    for t in (1, 2, 3, 4):
        for size in (4, 31, 32, 64, 92, 148, 1500, 65000):
            junk.append(bytes([t, 0, 0, 0]) + rnd.randbytes(size - 4))
    script = (
        "import socket,sys,json\n"
        "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
        "for h in json.load(sys.stdin): s.sendto(bytes.fromhex(h),(sys.argv[1],int(sys.argv[2])))\n"
    )
    two_hosts[1].run(
        ["python3", "-c", script, str(two_hosts[0].ip), str(ours.port)],
        input=json.dumps([j.hex() for j in junk]),
        timeout=30,
    )
    time.sleep(0.5)
    assert ours.proc.running
    ping(ref, ours.tunnel_ip)
    ping(ours, ref.tunnel_ip)


def test_exits_when_interface_is_deleted(lab: Lab, two_hosts) -> None:
    ours = start_end(two_hosts[0], "meshscale", 1, log_dir=lab.workdir)
    two_hosts[0].run(["ip", "link", "del", ours.ifname])
    code = ours.proc.wait(timeout=10)
    assert code == 0
    assert not os.path.exists(f"/var/run/wireguard/{ours.ifname}.sock")


def test_wg_quick_userspace_implementation(lab: Lab, two_hosts, tmp_path) -> None:
    """wg-quick drives meshscale-wireguard when the kernel module is missing (or refused)."""
    from meshscale.lab.wgpair import meshscale_wireguard_argv, wg_genkey

    a_host, b_host = two_hosts
    ref = start_end(b_host, "wireguard-go", 2, log_dir=lab.workdir)
    priv, pub = wg_genkey()
    ifname = f"wq{os.getpid() % 10000}{random.randrange(100)}"
    conf = tmp_path / f"{ifname}.conf"
    conf.write_text(
        f"[Interface]\nPrivateKey = {priv}\nAddress = 10.100.0.1/24\nListenPort = 51820\n\n"
        f"[Peer]\nPublicKey = {ref.public_key}\nAllowedIPs = 10.100.0.2/32\n"
        f"Endpoint = {b_host.ip}:{ref.port}\n"
    )
    conf.chmod(0o600)
    ref.wg("set", ref.ifname, "peer", pub, "allowed-ips", "10.100.0.1/32")
    # A script in PATH named like the implementation, so wg-quick runs "meshscale-wireguard IF".
    env = {
        "WG_QUICK_USERSPACE_IMPLEMENTATION": " ".join(meshscale_wireguard_argv()),
        "WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD": "1",
    }
    up = a_host.run(["wg-quick", "up", str(conf)], env=env, timeout=60, check=False)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert "meshscale-wireguard" in up.stderr or "meshscale" in up.stderr
        res = a_host.run(
            ["ping", "-c", "3", "-i", "0.2", "-W", "3", "10.100.0.2"], timeout=20, check=False
        )
        assert res.returncode == 0, res.stdout
        shown = a_host.run(["wg", "showconf", ifname]).stdout
        assert ref.public_key in shown and "ListenPort = 51820" in shown
    finally:
        down = a_host.run(["wg-quick", "down", str(conf)], env=env, timeout=30, check=False)
        assert down.returncode == 0, down.stdout + down.stderr


def test_wire_sizes_match_wireguard_go(lab: Lab, two_hosts) -> None:
    """Captured on the wire: handshake 148/92, keepalive 32, ICMP 84 B -> 128 B payload."""
    import shutil

    if shutil.which("tcpdump") is None:
        pytest.skip("tcpdump not installed")
    ours = start_end(two_hosts[0], "meshscale", 1, log_dir=lab.workdir)
    ref = start_end(two_hosts[1], "wireguard-go", 2, log_dir=lab.workdir)
    connect(ours, ref)
    cap = two_hosts[0].spawn(
        ["tcpdump", "-n", "-l", "-i", "any", "-q", f"udp and port {ours.port}"], log_name="cap"
    )
    time.sleep(1.0)
    ping(ours, ref.tunnel_ip, count=2)  # 56-byte payload: 84-byte IP packet
    time.sleep(0.5)
    cap.stop()
    lengths = [int(m) for m in __import__("re").findall(r"UDP, length (\d+)", cap.log_text())]
    assert lengths[:2] == [148, 92], lengths
    assert 32 in lengths or lengths.count(128) >= 3, lengths
    assert lengths.count(128) >= 3, lengths  # 84 -> padded 96 + 16 header + 16 tag


def test_real_time_rekey_keeps_tcp_flowing(lab: Lab, two_hosts) -> None:
    """Past REKEY_AFTER_TIME (120 s) the initiator rekeys; a TCP flow sees no stall."""
    ours = start_end(two_hosts[0], "meshscale", 1, log_dir=lab.workdir)
    ref = start_end(two_hosts[1], "wireguard-go", 2, log_dir=lab.workdir)
    connect(ours, ref)
    ping(ours, ref.tunnel_ip)  # ours initiates, so ours rekeys after 120 s of sending
    first = int(dump_peer(ours)[4])
    srv = ref.host.spawn(["iperf3", "-s", "-1", "-B", ref.tunnel_ip], log_name="iperf-rekey")
    try:
        time.sleep(0.3)
        res = ours.host.run(
            ["iperf3", "-c", ref.tunnel_ip, "-t", "135", "-b", "20M", "-i", "1", "-J"],
            timeout=200,
            check=False,
        )
    finally:
        srv.stop()
    assert res.returncode == 0, res.stderr
    intervals = json.loads(res.stdout)["intervals"]
    rates = [iv["sum"]["bits_per_second"] for iv in intervals]
    assert len(rates) >= 130
    assert min(rates) > 1e6, f"the flow stalled: {min(rates)} bit/s"
    latest = int(dump_peer(ours)[4])
    assert latest >= first + 115, (first, latest)  # a new handshake happened mid-flow
