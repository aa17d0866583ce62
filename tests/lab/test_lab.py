"""The network lab: topology, reachability, NAT behaviour, isolation and teardown."""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import shlex
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from meshscale.lab import Host, Lab, LabError, NatKind, cleanup_stale, netns
from meshscale.lab.insocket import socket_in_netns
from meshscale.lab.lab import INTERNET_GW4, INTERNET_GW6
from meshscale.lab.netns import netns_list, netns_pids
from meshscale.lab.owner import owner_path

pytestmark = [pytest.mark.lab, pytest.mark.slow, pytest.mark.timeout(120)]

PY = sys.executable
UDP_PORT = 3478
TCP_PORT = 8080


def start_echo(host: Host) -> None:
    p = host.spawn(
        [PY, "-m", "meshscale.lab.echo", "serve", "--udp", str(UDP_PORT), "--tcp", str(TCP_PORT)],
        log_name=f"echo-{host.name}",
    )
    deadline = time.monotonic() + 10
    while "ready" not in p.log_text():
        assert p.running, p.log_text()
        assert time.monotonic() < deadline, "echo server did not start"
        time.sleep(0.02)


def probe(host: Host, *, udp: list[Host], tcp: list[Host], timeout: float = 3.0) -> dict[str, Any]:
    argv = [PY, "-m", "meshscale.lab.echo", "probe", "--bind-port", "40000"]
    argv += ["--timeout", str(timeout)]
    for h in udp:
        argv += ["--udp", f"{h.ip}:{UDP_PORT}"]
    for h in tcp:
        argv += ["--tcp", f"{h.ip}:{TCP_PORT}"]
    res = host.run(argv, timeout=timeout * 4 + 10)
    result: dict[str, Any] = json.loads(res.stdout)
    return result


def ns_exists(ns: str) -> bool:
    return ns in netns_list()


def test_topology_comes_up(lab: Lab) -> None:
    a = lab.add_public_host("a")
    r = lab.add_nat("nat1", NatKind.EASY)
    b = lab.add_private_host("b", behind=r)
    assert a.ip in ipaddress.IPv4Network("203.0.113.0/24")
    assert a.ip6 in ipaddress.IPv6Network("2001:db8:1::/64")
    assert r.public_ip in ipaddress.IPv4Network("203.0.113.0/24")
    assert r.public_ip6 in ipaddress.IPv6Network("2001:db8:1::/64")
    assert r.lan_ip == ipaddress.IPv4Address("10.1.0.1")
    assert b.ip == ipaddress.IPv4Address("10.1.0.2")
    assert len({a.ip, r.public_ip}) == 2
    for h in (a, r, b):
        assert h.ns.startswith(lab.name + "-")
        assert ns_exists(h.ns)
        lo = json.loads(h.run(["ip", "-j", "link", "show", "lo"]).stdout)[0]
        assert "UP" in lo["flags"]
    assert f"default via {INTERNET_GW4} dev eth0" in a.run(["ip", "route"]).stdout
    assert f"default via {INTERNET_GW6} dev eth0" in a.run(["ip", "-6", "route"]).stdout
    assert f"default via {r.lan_ip} dev eth0" in b.run(["ip", "route"]).stdout
    assert lab.workdir.is_dir()


def test_public_to_public_ping(lab: Lab) -> None:
    a = lab.add_public_host("a")
    c = lab.add_public_host("c")
    a.run(["ping", "-c", "1", "-W", "2", str(c.ip)])
    a.run(["ping", "-6", "-c", "1", "-W", "2", str(c.ip6)])
    c.run(["ping", "-c", "1", "-W", "2", str(a.ip)])


@pytest.mark.parametrize("kind", list(NatKind))
def test_private_to_public_tcp(lab: Lab, kind: NatKind) -> None:
    s = lab.add_public_host("s")
    r = lab.add_nat("nat", kind)
    b = lab.add_private_host("b", behind=r)
    start_echo(s)
    out = probe(b, udp=[], tcp=[s])
    seen = out["tcp"][f"{s.ip}:{TCP_PORT}"]
    assert seen is not None
    assert seen.split()[0] == str(r.public_ip)  # masqueraded


def _nat_udp(lab: Lab, kind: NatKind) -> tuple[Host, Host, dict[str, Any]]:
    s1 = lab.add_public_host("s1")
    s2 = lab.add_public_host("s2")
    r = lab.add_nat("nat", kind)
    b = lab.add_private_host("b", behind=r)
    start_echo(s1)
    start_echo(s2)
    timeout = 2.0 if kind is NatKind.UDP_BLOCK else 5.0
    out = probe(b, udp=[s1, s2], tcp=[s1], timeout=timeout)
    return s1, s2, out


def test_easy_nat_is_endpoint_independent(lab: Lab) -> None:
    s1, s2, out = _nat_udp(lab, NatKind.EASY)
    router = lab.hosts["nat"]
    m1 = out["udp"][f"{s1.ip}:{UDP_PORT}"]
    m2 = out["udp"][f"{s2.ip}:{UDP_PORT}"]
    assert m1 == m2 == f"{router.ip} 40000"  # same public ip:port, source port preserved


def test_hard_nat_is_endpoint_dependent(lab: Lab) -> None:
    s1, s2, out = _nat_udp(lab, NatKind.HARD)
    router = lab.hosts["nat"]
    ip1, port1 = out["udp"][f"{s1.ip}:{UDP_PORT}"].split()
    ip2, port2 = out["udp"][f"{s2.ip}:{UDP_PORT}"].split()
    assert ip1 == ip2 == str(router.ip)
    assert port1 != port2


def test_udp_block_drops_udp_keeps_tcp(lab: Lab) -> None:
    s1, s2, out = _nat_udp(lab, NatKind.UDP_BLOCK)
    assert out["udp"] == {f"{s1.ip}:{UDP_PORT}": None, f"{s2.ip}:{UDP_PORT}": None}
    assert out["tcp"][f"{s1.ip}:{TCP_PORT}"] is not None
    # The echo servers really were reachable over UDP from the public side.
    lab_a = lab.add_public_host("a")
    direct = probe(lab_a, udp=[s1], tcp=[])
    assert direct["udp"][f"{s1.ip}:{UDP_PORT}"] == f"{lab_a.ip} 40000"


def _lab_nsids(host_ns: str | None) -> dict[int, str | None]:
    """nsid -> namespace name (None when unnamed, e.g. the root namespace) as seen from host_ns."""
    argv = (
        ["ip", "-j", "netns", "list-id"]
        if host_ns is None
        else ["ip", "-n", host_ns, "-j", "netns", "list-id"]
    )
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    return {e["nsid"]: e.get("name") for e in json.loads(out or "[]")}


def test_lab_is_isolated_from_the_machine(lab: Lab) -> None:
    lab.add_public_host("a")
    r = lab.add_nat("nat", NatKind.EASY)
    lab.add_private_host("b", behind=r)
    lab.add_nat("hard", NatKind.HARD)
    lab_ns = set(lab.namespaces)
    allowed_gateways = {str(INTERNET_GW4), str(INTERNET_GW6), str(r.lan_ip)}
    for ns in lab.namespaces:
        # Every link's peer lives in a lab namespace: no veth reaches the root namespace.
        ids = _lab_nsids(ns)
        links = json.loads(
            subprocess.run(
                ["ip", "-n", ns, "-j", "-d", "link", "show"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )
        for link in links:
            if "link_netnsid" in link:
                assert ids.get(link["link_netnsid"]) in lab_ns, (ns, link["ifname"])
        # Every route is on-link inside the lab or via a lab gateway.
        for family in ("-4", "-6"):
            routes = json.loads(
                subprocess.run(
                    ["ip", "-n", ns, "-j", family, "route", "show", "table", "all"],
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout
            )
            for route in routes:
                gw = route.get("gateway")
                assert gw is None or gw in allowed_gateways, (ns, route)
    # Seen from the machine: no veth has its peer in a lab namespace.
    root_ids = _lab_nsids(None)
    root_links = json.loads(
        subprocess.run(
            ["ip", "-j", "-d", "link", "show"], capture_output=True, text=True, check=True
        ).stdout
    )
    for link in root_links:
        if "link_netnsid" in link:
            assert root_ids.get(link["link_netnsid"]) not in lab_ns, link["ifname"]
    # The internet namespace does not forward and has no default route.
    inet = lab.internet
    assert inet.run(["sysctl", "-n", "net.ipv4.ip_forward"]).stdout.strip() == "0"
    assert inet.run(["sysctl", "-n", "net.ipv6.conf.all.forwarding"]).stdout.strip() == "0"
    assert "default" not in inet.run(["ip", "route"]).stdout


def test_teardown_when_body_raises(need_lab: None, tmp_path: Path) -> None:
    seen: dict[str, Any] = {}
    pidfile = tmp_path / "grandchild.pid"

    def body() -> None:
        with Lab(hint="td", workdir=tmp_path) as lab:
            seen["lab"] = lab
            r = lab.add_nat("nat", NatKind.HARD)
            b = lab.add_private_host("b", behind=r)
            lab.add_hosts_entry("ctl.lab", r.ip)
            seen["p"] = b.spawn(["sleep", "300"], log_name="sleeper")
            # A grandchild in its own session that ignores SIGTERM: only the sweep of the
            # namespace's PIDs can find it.
            script = f"echo $$ > {pidfile}; trap '' TERM; exec sleep 300"
            seen["q"] = b.spawn(["sh", "-c", f"setsid sh -c {shlex.quote(script)} & wait"])
            deadline = time.monotonic() + 5
            while not pidfile.exists() or not pidfile.read_text().strip():
                assert time.monotonic() < deadline
                time.sleep(0.02)
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        body()
    lab: Lab = seen["lab"]
    assert lab.closed
    assert len(lab.namespaces) == 3
    for ns in lab.namespaces:
        assert not ns_exists(ns)
        assert not Path("/etc/netns", ns).exists()
    assert seen["p"].returncode is not None
    assert seen["q"].returncode is not None
    assert _pid_gone(int(pidfile.read_text()))
    assert not owner_path(lab.name).exists()
    lab.close()  # idempotent


def test_two_labs_never_collide(need_lab: None, tmp_path: Path) -> None:
    with Lab(hint="wg", workdir=tmp_path / "1") as l1, Lab(hint="wg", workdir=tmp_path / "2") as l2:
        assert l1.name != l2.name
        a1 = l1.add_public_host("a")
        a2 = l2.add_public_host("a")
        assert a1.ns != a2.ns
        assert not set(l1.namespaces) & set(l2.namespaces)
        # Same addresses, separate internets: each reaches its own lab only.
        assert a1.ip == a2.ip
        c1 = l1.add_public_host("c")
        a1.run(["ping", "-c", "1", "-W", "2", str(c1.ip)])
        res = a2.run(["ping", "-c", "1", "-W", "1", str(c1.ip)], check=False)
        assert res.returncode != 0


def _crashing_lab_script(mode: str) -> str:
    return textwrap.dedent(f"""
        import os, signal, sys, time
        from meshscale.lab import Lab, NatKind
        if "{mode}" == "chain":
            def earlier(signum, frame):
                print("earlier handler ran", flush=True)
                sys.exit(7)
            signal.signal(signal.SIGTERM, earlier)
        lab = Lab(hint="cr")
        r = lab.add_nat("nat", NatKind.EASY)
        b = lab.add_private_host("b", behind=r)
        p = b.spawn(["sleep", "300"])
        print(lab.name, p.pid, flush=True)
        if "{mode}" == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if "{mode}" == "exit":
            sys.exit(0)
        time.sleep(60)
    """)


def _run_crashing_lab(mode: str) -> tuple[subprocess.Popen[str], str, int]:
    child = subprocess.Popen(
        [PY, "-c", _crashing_lab_script(mode)], stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None
    line = child.stdout.readline().split()
    assert len(line) == 2, "child lab did not start"
    return child, line[0], int(line[1])


def _pid_gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat[stat.rindex(")") + 2] == "Z"


def test_cleanup_stale_removes_crashed_lab(need_lab: None) -> None:
    child, name, sleeper = _run_crashing_lab("kill")
    child.wait(10)
    assert child.stdout is not None
    child.stdout.close()
    left = [ns for ns in netns_list() if ns.startswith(name + "-")]
    assert len(left) == 3  # inet, nat, b: the crash left them behind
    try:
        removed = cleanup_stale(prefix=name)
        assert sorted(removed) == sorted(left)
        assert not [ns for ns in netns_list() if ns.startswith(name + "-")]
        assert not owner_path(name).exists()
        deadline = time.monotonic() + 5
        while not _pid_gone(sleeper) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _pid_gone(sleeper)
    finally:
        cleanup_stale(prefix=name)


def test_cleanup_stale_spares_live_lab(lab: Lab) -> None:
    lab.add_public_host("a")
    assert cleanup_stale(prefix=lab.name) == []
    assert all(ns_exists(ns) for ns in lab.namespaces)


def test_sigterm_tears_down(need_lab: None) -> None:
    child, name, sleeper = _run_crashing_lab("sleep")
    try:
        assert [ns for ns in netns_list() if ns.startswith(name + "-")]
        child.terminate()
        assert child.wait(20) == -15  # the handler chains to the default action
        assert not [ns for ns in netns_list() if ns.startswith(name + "-")]
        assert not owner_path(name).exists()
        assert _pid_gone(sleeper)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
        assert child.stdout is not None
        child.stdout.close()
        cleanup_stale(prefix=name)


def test_proc_stop_log_and_wait(lab: Lab) -> None:
    a = lab.add_public_host("a")
    p = a.spawn(
        ["sh", "-c", "echo hello-$NAME; exec sleep 300"], env={"NAME": "lab"}, log_name="hello"
    )
    deadline = time.monotonic() + 5
    while "hello-lab" not in p.log_text() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert "hello-lab" in p.log_text()
    assert (lab.workdir / "hello.log").exists()
    with pytest.raises(subprocess.TimeoutExpired):
        p.wait(0.05)
    assert p.stop() == -15
    assert not p.running
    stubborn = a.spawn(["sh", "-c", "trap '' TERM; echo armed; while :; do sleep 0.05; done"])
    deadline = time.monotonic() + 5
    while "armed" not in stubborn.log_text() and time.monotonic() < deadline:
        time.sleep(0.02)
    t0 = time.monotonic()
    assert stubborn.stop(grace=0.3) == -9  # SIGTERM ignored, SIGKILL after the grace
    assert time.monotonic() - t0 < 3
    q = a.spawn(["sh", "-c", "exit 3"])
    assert q.wait(5) == 3
    res = a.run(["cat"], input="piped")
    assert res.stdout == "piped"
    with pytest.raises(subprocess.CalledProcessError):
        a.run(["false"])
    assert a.run(["false"], check=False).returncode == 1


def test_hosts_entries_resolve_everywhere(lab: Lab) -> None:
    a = lab.add_public_host("a")
    lab.add_hosts_entry("ctl.lab", a.ip)
    r = lab.add_nat("nat", NatKind.EASY)
    b = lab.add_private_host("b", behind=r)  # created after the entry
    lab.add_hosts_entry("derp.lab", r.ip)
    for h in (a, r, b):
        assert h.run(["getent", "hosts", "ctl.lab"]).stdout.split()[0] == str(a.ip)
        assert h.run(["getent", "hosts", "derp.lab"]).stdout.split()[0] == str(r.ip)
    # The machine's own /etc/hosts is untouched.
    assert "ctl.lab" not in Path("/etc/hosts").read_text()
    assert os.path.isfile(f"/etc/netns/{a.ns}/hosts")


def test_in_process_socket_lives_in_the_namespace(lab: Lab) -> None:
    a = lab.add_public_host("a")
    c = lab.add_public_host("c")
    start_echo(c)
    with a.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((str(a.ip), 0))  # a.ip exists only in a's namespace
        s.settimeout(5)
        s.sendto(b"x", (str(c.ip), UDP_PORT))
        data, _ = s.recvfrom(100)
        assert data.decode() == f"{a.ip} {s.getsockname()[1]}"
    # The process itself stays in the machine's namespace.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s, pytest.raises(OSError):
        s.bind((str(a.ip), 0))
    with pytest.raises(FileNotFoundError):
        socket_in_netns(lab.name + "-nope")


def _punch(lab: Lab, k1: NatKind, k2: NatKind, timeout: float) -> tuple[Any, Any]:
    r1 = lab.add_nat("nat1", k1)
    r2 = lab.add_nat("nat2", k2)
    b1 = lab.add_private_host("b1", behind=r1)
    b2 = lab.add_private_host("b2", behind=r2)
    base = [PY, "-m", "meshscale.lab.echo", "punch", "--bind-port", "40000"]
    p = b1.spawn([*base, "--peer", f"{r2.ip}:40000", "--timeout", str(timeout)], log_name="p1")
    res = b2.run([*base, "--peer", f"{r1.ip}:40000", "--timeout", str(timeout)], timeout=30)
    assert p.wait(30) == 0
    first = json.loads(p.log_text().strip().splitlines()[-1])["from"]
    return first, json.loads(res.stdout)["from"]


def test_hole_punching_through_two_easy_nats(lab: Lab) -> None:
    got1, got2 = _punch(lab, NatKind.EASY, NatKind.EASY, timeout=5.0)
    assert got1 == f"{lab.hosts['nat2'].ip} 40000"
    assert got2 == f"{lab.hosts['nat1'].ip} 40000"


def test_hole_punching_fails_between_hard_nats(lab: Lab) -> None:
    assert _punch(lab, NatKind.HARD, NatKind.HARD, timeout=2.0) == (None, None)


def test_atexit_tears_down_an_unclosed_lab(need_lab: None) -> None:
    child, name, sleeper = _run_crashing_lab("exit")
    try:
        assert child.wait(30) == 0
        assert not [ns for ns in netns_list() if ns.startswith(name + "-")]
        assert not owner_path(name).exists()
        assert _pid_gone(sleeper)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
        assert child.stdout is not None
        child.stdout.close()
        cleanup_stale(prefix=name)


def test_half_built_router_is_torn_down(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_nft(ns: str, ruleset: str) -> None:
        raise LabError("nft exploded")

    monkeypatch.setattr(netns, "ns_nft", broken_nft)
    with pytest.raises(LabError, match="nft exploded"):
        lab.add_nat("nat", NatKind.EASY)
    half = f"{lab.name}-nat"
    assert half in lab.namespaces
    assert ns_exists(half)
    lab.close()
    assert not ns_exists(half)
    assert not owner_path(lab.name).exists()


def test_loss_and_rate_impairments(lab: Lab) -> None:
    a = lab.add_public_host("a")
    c = lab.add_public_host("c")
    a.set_loss(100.0)
    assert a.run(["ping", "-c", "1", "-W", "1", str(c.ip)], check=False).returncode != 0
    a.set_loss(0)
    a.run(["ping", "-c", "1", "-W", "2", str(c.ip)])
    a.set_rate("1mbit")
    assert "tbf" in a.run(["tc", "qdisc", "show", "dev", "eth0"]).stdout
    a.set_rate(None)
    assert "tbf" not in a.run(["tc", "qdisc", "show", "dev", "eth0"]).stdout
    a.set_rate(None)  # idempotent
    with pytest.raises(ValueError):
        a.set_loss(101)


def test_describe_lists_hosts(lab: Lab) -> None:
    a = lab.add_public_host("a")
    r = lab.add_nat("nat", NatKind.UDP_BLOCK)
    lab.add_private_host("b", behind=r)
    lab.add_hosts_entry("ctl.lab", a.ip)
    text = lab.describe()
    assert lab.name in text
    assert "udp_block" in text
    assert "private behind nat  10.1.0.2" in text
    assert f"ctl.lab      hosts-entry {a.ip}" in text


def test_sigterm_chains_to_an_earlier_handler(need_lab: None) -> None:
    child, name, sleeper = _run_crashing_lab("chain")
    try:
        child.terminate()
        assert child.wait(20) == 7  # the earlier handler ran after the lab closed
        assert child.stdout is not None
        assert "earlier handler ran" in child.stdout.read()
        assert not [ns for ns in netns_list() if ns.startswith(name + "-")]
        assert _pid_gone(sleeper)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
        assert child.stdout is not None
        child.stdout.close()
        cleanup_stale(prefix=name)


def test_name_clash_is_retried(
    need_lab: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tokens = iter(["abcdef", "abcdef", "123456"])
    monkeypatch.setattr(secrets, "token_hex", lambda n: next(tokens))
    with Lab(hint="nc", workdir=tmp_path / "1") as l1, Lab(hint="nc", workdir=tmp_path / "2") as l2:
        assert l1.name == "msncabcdef"
        assert l2.name == "msnc123456"


def test_run_timeout_is_bounded_even_with_a_lingering_grandchild(lab: Lab) -> None:
    a = lab.add_public_host("a")
    t0 = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired):
        # The background sleep holds stdout open; subprocess.run would wait for it forever.
        a.run(["sh", "-c", "sleep 300 & echo started; sleep 300"], timeout=0.5)
    assert time.monotonic() - t0 < 4
    assert netns_pids(a.ns) == []  # the whole group was killed


def test_on_close_runs_after_processes_stop(need_lab: None, tmp_path: Path) -> None:
    order: list[str] = []
    with Lab(hint="oc", workdir=tmp_path) as lab:
        p = lab.add_public_host("a").spawn(["sleep", "300"])
        lab.on_close(lambda: order.append(f"first running={p.running}"))
        lab.on_close(lambda: 1 / 0)  # swallowed
        lab.on_close(lambda: order.append("second"))
    assert order == ["second", "first running=False"]
