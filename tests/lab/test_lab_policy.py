"""Issue #9 acceptance: a HuJSON policy, compiled by our control server, enforced by our node
and by official tailscale 1.96.4 clients; reloads on SIGHUP and on a file rewrite; a bad
policy is refused and the old one stays in force.

Nodes (all on public hosts): db (official, tagged through a tagged pre-auth key), dbours
(ours, tagged the same way), dev1 (official, user dev), dev2 (ours, user dev), other1
(official, user other). db, dbours and dev1 serve TCP on 5432 and 8080. The policy lets
group:dev (user dev) reach tag:db:5432 and nothing else. Every check is a TCP connect from
inside the source's namespace, made right after ``up`` returns.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from meshscale.lab import Lab
from meshscale.lab.lab import Host
from meshscale.lab.meshnet import MeshNet, MeshNode

pytestmark = [pytest.mark.lab, pytest.mark.interop, pytest.mark.slow, pytest.mark.timeout(240)]

POLICY = """{
  // dev may reach the database on 5432, and nothing else
  "groups": {
    "group:dev": ["dev@",],  // Headscale-style user reference
  },
  "tagOwners": {"tag:db": ["lab@"],},
  /* one rule */
  "acls": [
    {"action": "accept", "src": ["group:dev"], "dst": ["tag:db:5432"]},
  ],
}
"""
WITH_OTHER = POLICY.replace('["dev@",]', '["dev@", "other@",]')
UNDEFINED_GROUP = POLICY.replace('"src": ["group:dev"]', '"src": ["group:nosuch"]')
ALLOWED_WAIT = 15.0  # an allowed connect may retry this long (tunnel setup right after up)
DENIED_WAIT = 3.0  # a denied connect must still fail after this long


def _probe(host: Host, target: str, timeout: float) -> bool:
    """Whether a TCP connect from ``host`` to ``target`` gets the echo server's answer."""
    res = host.run([sys.executable, "-m", "meshscale.lab.echo", "probe", "--tcp", target,
                    "--timeout", str(timeout)], timeout=timeout + 15)  # fmt: skip
    return json.loads(res.stdout)["tcp"][target] is not None


def _serve(host: Host, name: str) -> None:
    for port in (5432, 8080):
        host.spawn([sys.executable, "-m", "meshscale.lab.echo", "serve", "--tcp", str(port)],
                   log_name=f"echo-{name}-{port}")  # fmt: skip


def _our_up(node: MeshNode, key: str, *extra: str) -> None:
    node.cli("up", f"--login-server={node.net.control_url}", f"--authkey={key}",
             f"--hostname={node.name}", "--timeout=40s", *extra, timeout=55)  # fmt: skip


# Connects every 0.1 s (0.25 s connect timeout) until one succeeds; prints the system-wide
# CLOCK_MONOTONIC time of that success (comparable with the test's), or -1 after the limit.
_OPENS = """
import socket, sys, time
t0 = time.monotonic(); host, port = sys.argv[1].rsplit(":", 1)
while time.monotonic() - t0 < float(sys.argv[2]):
    try:
        socket.create_connection((host, int(port)), timeout=0.25).close()
        print(time.monotonic()); break
    except OSError:
        time.sleep(0.1)
else:
    print(-1)
"""


def _opens(host: Host, target: str, limit: float) -> float | None:
    """Seconds from now until a TCP connect from ``host`` to ``target`` succeeds (None:
    not within ``limit``); the connects start as soon as the probe process runs."""
    t0 = time.monotonic()
    res = host.run([sys.executable, "-c", _OPENS, target, str(limit)], timeout=limit + 15)
    at = float(res.stdout.strip())
    return None if at < 0 else at - t0


def test_policy_enforced_reloaded_and_bad_policy_refused(need_lab: None, tmp_path: Path) -> None:
    from meshscale.lab.clients import missing_clients
    from meshscale.lab.tailscale import TailscaleNode

    if missing_clients("tailscale", "tailscaled"):
        pytest.skip("official clients not cached (scripts/fetch-clients)")
    policy = tmp_path / "policy.hujson"
    policy.write_text(POLICY)
    with Lab(hint="pol", workdir=tmp_path / "lab") as lab:
        net = MeshNet(lab, tmp_path / "net", {"policy": {"mode": "file", "path": str(policy)}})
        net.start_control()
        ctl = net.control
        assert ctl is not None and ctl.proc is not None and net.ca is not None
        db_key = ctl.authkey("lab", tags=("tag:db",))
        dev_key, other_key = ctl.authkey("dev"), ctl.authkey("other")
        ts: dict[str, TailscaleNode] = {}
        for name in ("db", "dev1", "other1"):
            ts[name] = TailscaleNode(lab.add_public_host(name), name, ca_cert=net.ca.cert_path)
        ours = {name: net.add_node(name, lab.add_public_host(name)) for name in ("dbours", "dev2")}
        for name, host in (("db", ts["db"].host), ("dev1", ts["dev1"].host),
                           ("dbours", ours["dbours"].host)):  # fmt: skip
            _serve(host, name)
        try:
            # A node may not take a tag its user does not own: refused, saying why.
            res = ours["dev2"].cli("up", f"--login-server={net.control_url}",
                                   f"--authkey={dev_key}", "--hostname=dev2",
                                   "--advertise-tags=tag:db", "--timeout=20s",
                                   check=False, timeout=35)  # fmt: skip
            assert res.returncode != 0
            assert "requested tags [tag:db] are invalid or not permitted" in res.stderr, res

            with ThreadPoolExecutor(5) as pool:
                ups = [
                    pool.submit(ts["db"].up, net.control_url, db_key, hostname="db", timeout=40),
                    pool.submit(
                        ts["dev1"].up, net.control_url, dev_key, hostname="dev1", timeout=40
                    ),
                    pool.submit(
                        ts["other1"].up, net.control_url, other_key, hostname="other1", timeout=40
                    ),
                    pool.submit(_our_up, ours["dbours"], db_key),
                    pool.submit(_our_up, ours["dev2"], dev_key, "--reset"),
                ]
                for f in ups:
                    f.result()
            nodes = {n["given_name"]: n for n in ctl.nodes()}
            assert nodes["db"]["tags"] == ["tag:db"] and nodes["dbours"]["tags"] == ["tag:db"]
            ip = {n: t.ip4() for n, t in ts.items()} | {n: m.ip4() for n, m in ours.items()}
            hosts = {n: t.host for n, t in ts.items()} | {n: m.host for n, m in ours.items()}

            allowed = [("dev1", "db", 5432), ("dev2", "db", 5432), ("dev1", "dbours", 5432)]
            denied = [("dev1", "db", 8080), ("dev2", "db", 8080), ("other1", "db", 5432),
                      ("other1", "dbours", 5432), ("db", "dev1", 8080)]  # fmt: skip
            with ThreadPoolExecutor(8) as pool:
                got = {
                    (s, d, p): pool.submit(_probe, hosts[s], f"{ip[d]}:{p}",
                                           ALLOWED_WAIT if (s, d, p) in allowed else DENIED_WAIT)
                    for s, d, p in allowed + denied
                }  # fmt: skip
                result = {k: f.result() for k, f in got.items()}
            assert [k for k in allowed if not result[k]] == [], result
            assert [k for k in denied if result[k]] == [], result
            peers = {p["HostName"] for p in ts["other1"].peers()}
            assert "db" not in peers and "dbours" not in peers, peers

            # other@ joins group:dev: file rewrite + SIGHUP, then the rewrite alone.
            other_db = f"{ip['db']}:5432"
            policy.write_text(WITH_OTHER)
            os.kill(ctl.proc.pid, signal.SIGHUP)  # (the watcher may beat the signal)
            took_hup = _opens(hosts["other1"], other_db, 10)
            assert took_hup is not None and took_hup <= 2.0, took_hup
            policy.write_text(POLICY)
            os.kill(ctl.proc.pid, signal.SIGHUP)
            time.sleep(1.0)
            assert not _probe(hosts["other1"], other_db, DENIED_WAIT)
            policy.write_text(WITH_OTHER)  # no signal: the server sees the file change
            took_write = _opens(hosts["other1"], other_db, 10)
            assert took_write is not None and took_write <= 2.0, took_write

            # An invalid policy: `policy check` names it; a reload refuses it; the old one
            # stays in force and the server keeps running.
            bad = tmp_path / "bad.hujson"
            bad.write_text(UNDEFINED_GROUP)
            res = ctl.admin("policy", "check", "-f", str(bad), check=False)
            assert res.returncode != 0 and 'undefined group "group:nosuch" at 9:' in res.stderr
            failing = tmp_path / "failing.hujson"
            failing.write_text(
                POLICY.replace(
                    "/* one rule */",
                    f'"tests": [{{"src": "dev@", "accept": ["{ip["db"]}:8080"]}}],',
                )
            )
            res = ctl.admin("policy", "check", "-f", str(failing), check=False)
            assert res.returncode != 0 and f"{ip['db']}:8080" in res.stderr, res
            policy.write_text(UNDEFINED_GROUP)
            os.kill(ctl.proc.pid, signal.SIGHUP)
            time.sleep(1.5)
            assert ctl.running
            assert 'undefined group "group:nosuch"' in ctl.log_text()
            assert ctl.admin_json("policy", "get")["policy"] == WITH_OTHER
            assert _probe(hosts["other1"], other_db, ALLOWED_WAIT)
            assert not _probe(hosts["dev1"], f"{ip['db']}:8080", DENIED_WAIT)
            versions = ctl.admin_json("policy", "history")
            assert [v["source"] for v in versions][:3] == ["file", "file", "file"]
            print(f"policy change -> open: SIGHUP {took_hup:.2f}s, rewrite {took_write:.2f}s")
        except BaseException:
            print("--- control ---\n" + ctl.log_text()[-4000:])
            for name, m in ours.items():
                print(f"--- {name} ---\n" + m.log()[-2000:])
            raise
        finally:
            for t in ts.values():
                t.stop()
