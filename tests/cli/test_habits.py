"""Commands copied in shape from Headscale's and Tailscale's docs, typed as a user would.

The admin half runs the real ``meshscale-control`` (a served control server, its unix
socket, a registered node); the JSON it prints is checked against Headscale's protobuf
field names (tests/vectors/control/headscale-cli-json-fields.json).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.cli.localapi import run as node
from tests.control.test_main import Served, free_port, start_server, stop_server

import meshscale
from meshscale.cli.main import main as node_main
from meshscale.testing.fakebackend import FakeBackend, ThreadedLocalAPI

FIELDS = json.loads(
    (Path(__file__).parents[1] / "vectors/control/headscale-cli-json-fields.json").read_text()
)


def ctl(*argv: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meshscale.control.main", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        input=stdin,
    )


def check_shape(obj: dict[str, Any], kind: str) -> None:
    assert set(obj) <= set(FIELDS[kind]), set(obj) - set(FIELDS[kind])
    for key in ("created_at", "last_seen", "expiry", "expiration"):
        if key in obj:
            assert set(obj[key]) <= {"seconds", "nanos"} and isinstance(obj[key]["seconds"], int)
    assert isinstance(obj["id"], int)
    if "user" in obj and kind != "user":
        check_shape(obj["user"], "user")


@pytest.mark.slow
def test_headscale_doc_commands(tmp_path: Path) -> None:
    from meshscale.testing.controlclient import ControlClient

    port = free_port()
    cfg = tmp_path / "config.yaml"
    cfg.write_text(
        f"server_url: http://127.0.0.1:{port}\nlisten_addr: 127.0.0.1:{port}\n"
        f"unix_socket: {tmp_path}/ctl.sock\ndatabase:\n  type: sqlite\n"
        f"  sqlite:\n    path: {tmp_path}/db.sqlite\n"
        f"noise:\n  private_key_path: {tmp_path}/noise.key\n"
        "derp:\n  server:\n    enabled: true\n    stun_listen_addr: 127.0.0.1:0\n"
        "dns:\n  base_domain: tailnet.test\n"
    )
    # `headscale serve -c FILE`: the flag after the verb (the README's own quick start), the
    # file not named config.yaml so no default location could stand in for it.
    cfg = cfg.rename(tmp_path / "c.yaml")
    proc = start_server(tmp_path, port, ["--state-dir", str(tmp_path), "serve", "-c", str(cfg)])
    served = Served(tmp_path, cfg, port, proc)
    try:
        c = str(cfg)
        assert ctl("users", "create", "alice", "-c", c).returncode == 0
        users = json.loads(ctl("users", "list", "-o", "json", "-c", c).stdout)
        assert [u["name"] for u in users] == ["alice"]
        check_shape(users[0], "user")
        out = ctl(
            "preauthkeys",
            "create",
            "--user",
            "alice",
            "--reusable",
            "--expiration",
            "1h",
            "-o",
            "json",
            "-c",
            c,
        )
        assert out.returncode == 0, out.stderr
        key = json.loads(out.stdout)
        check_shape(key, "preauthkey")
        assert key["reusable"] is True and key["key"].startswith("hskey-auth-")
        assert key["expiration"]["seconds"] > 0

        async def join() -> None:
            node = ControlClient("127.0.0.1", port, hostname="laptop")
            await node.connect()
            resp = await node.register(auth_key=key["key"])
            await node.close()
            assert resp.MachineAuthorized and not resp.Error, resp

        asyncio.run(join())
        nodes = json.loads(ctl("nodes", "list", "-o", "json", "-c", c).stdout)
        assert len(nodes) == 1
        node = nodes[0]
        check_shape(node, "node")
        assert node["given_name"] == "laptop" and node["user"]["name"] == "alice"
        assert node["ip_addresses"][0].startswith("100.") and node["register_method"] == 1
        # json-line is one line; -ojson and --output=json spellings; flags before the verb too
        line = ctl("-c", c, "nodes", "ls", "--output=json-line").stdout
        assert line.count("\n") == 1 and json.loads(line)[0]["id"] == node["id"]
        assert json.loads(ctl("nodes", "show", "-ojson", "-c", c).stdout) == nodes
        assert "given_name: laptop" in ctl("nodes", "list", "-o", "yaml", "-c", c).stdout
        assert json.loads(ctl("nodes", "list-routes", "-o", "json", "-c", c).stdout) == []
        # errors under -o json are {"error": ...} on stdout
        bad = ctl("nodes", "delete", "-i", "999", "--force", "-o", "json", "-c", c)
        assert bad.returncode == 1 and "not found" in json.loads(bad.stdout)["error"]
        # confirmation: refused without --force when not at a terminal, done with it
        nid = str(node["id"])
        refused = ctl("nodes", "delete", "-i", nid, "-c", c)
        assert refused.returncode == 2 and "--force" in refused.stderr
        assert ctl("nodes", "rm", "-i", nid, "-c", c, "--force").returncode == 0
        assert json.loads(ctl("nodes", "list", "-o", "json", "-c", c).stdout) == []
        # pre-auth key delete and its aliases; api keys by --id
        assert ctl("preauthkeys", "exp", "--id", str(key["id"]), "-c", c).returncode == 0
        assert ctl("preauthkeys", "delete", "--id", str(key["id"]), "-c", c).returncode == 0
        assert json.loads(ctl("preauthkeys", "list", "-o", "json", "-c", c).stdout) == []
        assert ctl("apikeys", "create", "-c", c).returncode == 0
        api = json.loads(ctl("apikeys", "list", "-o", "json", "-c", c).stdout)[0]
        assert isinstance(api["id"], int)
        assert ctl("apikeys", "expire", "--id", str(api["id"]), "-c", c).returncode == 0
        assert ctl("apikeys", "delete", "--id", str(api["id"]), "-c", c).returncode == 0
        assert ctl("health", "-c", c).returncode == 0
    finally:
        stop_server(served.proc)


def test_offline_commands() -> None:
    out = ctl("generate", "private-key", "-o", "json")
    assert out.returncode == 0 and json.loads(out.stdout)["private_key"].startswith("privkey:")
    assert ctl("generate", "private-key").stdout.startswith("privkey:")
    for shell in ("bash", "zsh", "fish"):
        script = ctl("completion", shell).stdout
        assert "preauthkeys" in script and "meshscale-control" in script
    bash = ctl("completion", "bash").stdout
    assert subprocess.run(["bash", "-n"], input=bash, text=True).returncode == 0
    assert ctl("--version").stdout.startswith("meshscale-control ")
    for argv in (["nodes", "bogus"], ["nodes", "list", "--bogus"], ["preauthkeys", "create"]):
        bad = ctl(*argv)
        assert bad.returncode == 2 and bad.stderr.count("\n") == 1, (argv, bad.stderr)


@pytest.mark.parametrize(("argv", "needle", "verb"), [
    (["frobnicate"], "invalid choice: 'frobnicate'", ""),
    (["--bogus"], "unrecognized arguments: --bogus", ""),
    ([], "missing command", ""),
    (["nodes", "bogus"], "invalid choice: 'bogus'", "nodes"),
    (["nodes", "list", "--bogus"], "unrecognized arguments: --bogus", "nodes list"),
    (["-c", "x.yaml", "users", "list", "--bogus"], "unrecognized arguments: --bogus", "users list"),
    (["preauthkeys", "create", "--user", "alice", "--expiration"], "expected one argument",
     "preauthkeys create"),
    (["preauthkeys", "create", "--user", "alice", "--expiration", "1x"],
     "invalid duration '1x'", "preauthkeys create"),
    (["apikeys", "create", "--expiration=1x"], "invalid duration '1x'", "apikeys create"),
    (["nodes", "approve-routes", "-i", "1", "-r", "10.0.0.0/33"],
     "invalid route '10.0.0.0/33'", "nodes approve-routes"),
    (["nodes", "approve-routes", "-i", "1", "-r", "10.0.0.0/8,10.0.0.1/8"],
     "invalid route '10.0.0.1/8'", "nodes approve-routes"),
])  # fmt: skip
def test_admin_wrong_invocations(capsys: pytest.CaptureFixture[str], argv: list[str],
                                 needle: str, verb: str) -> None:  # fmt: skip
    """Refused while parsing (before any config or server): one line, the verb's usage, 2."""
    from meshscale.control.main import main as ctl_main

    with pytest.raises(SystemExit) as exc:
        ctl_main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1 and needle in err, err
    assert f"(usage: meshscale-control {verb}".replace("  ", " ") in err, err


# ---- the node CLI, against the local API (real unix socket, scripted backend) ------------


@pytest.fixture
def node_sock(tmp_path: Path) -> Iterator[tuple[FakeBackend, str]]:
    be = FakeBackend()
    be.state = "Running"
    with ThreadedLocalAPI(be, tmp_path / "ms.sock"):
        yield be, str(tmp_path / "ms.sock")


def test_tailscale_doc_commands(node_sock: tuple[FakeBackend, str],
                                capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    be, sock = node_sock
    code, out, err = node(capsys, sock, "whois", "--json", "100.64.0.2")
    assert code == 0, err
    assert json.loads(out)["UserProfile"]["LoginName"] == "alice@example.com"
    for spelling in ("-json", "--json", "-json=true", "--json=1"):
        code, out, err = node(capsys, sock, "status", spelling)
        assert code == 0 and json.loads(out)["BackendState"] == "Running", (spelling, err)
    code, out, _ = node(capsys, sock, "status", "--json=false")
    assert code == 0 and out.split()[0] == "100.64.0.1"
    code, out, _ = node(capsys, sock, "status", "--self=false")
    assert "100.64.0.1" not in out and "100.64.0.2" in out
    code, out, _ = node(capsys, sock, "status", "--peers=false")
    assert out.strip().split()[0] == "100.64.0.1" and len(out.strip().splitlines()) == 1
    code, out, _ = node(capsys, sock, "status", "--active")
    assert "100.64.0.4" not in out and "100.64.0.2" in out
    # with --json too (tailscale: --peers=false -> "Peer": null, --active drops idle peers)
    full = json.loads(node(capsys, sock, "status", "--json")[1])["Peer"]
    assert json.loads(node(capsys, sock, "status", "--json", "--peers=false")[1])["Peer"] is None
    active = json.loads(node(capsys, sock, "status", "--json", "--active")[1])["Peer"]
    assert active and set(active) < set(full) and all(p["Active"] for p in active.values())
    assert node(capsys, sock, "ip", "-1")[1] == "100.64.0.1\n"
    assert node(capsys, sock, "ip", "-4", "alpha")[1] == "100.64.0.2\n"
    code, out, _ = node(capsys, sock, "ping", "--verbose", "alpha", "-c", "1")
    assert code == 0 and "100.64.0.2" in out
    with pytest.raises(SystemExit) as exc:
        node_main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.strip() == meshscale.__version__
    code, out, _ = node(capsys, sock, "version", "--json")
    meta = json.loads(out)
    assert meta["majorMinorPatch"] and meta["short"] == meshscale.__version__
    assert isinstance(meta["cap"], int)
    code, out, _ = node(capsys, sock, "version", "--daemon", "--json")
    assert json.loads(out)["daemonLong"] == "0.1.0"

    # set changes only what it names; up then demands the non-default flags (or --reset)
    assert (
        node(
            capsys,
            sock,
            "up",
            "--login-server=http://ctl:8080",
            "--authkey",
            "k",
            "--timeout=1m30s",
        )[0]
        == 0
    )
    be.calls.clear()
    code, _, err = node(capsys, sock, "set", "--hostname=laptop")
    assert code == 0, err
    prefs, key, reset = be.calls[0][1]
    assert (prefs.Hostname, prefs.ControlURL, key, reset) == ("laptop", "http://ctl:8080", "",
                                                             False)  # fmt: skip
    be._prefs = prefs
    code, _, err = node(capsys, sock, "up", "--login-server=http://ctl:8080")
    assert code == 2 and "--hostname=laptop" in err and err.count("\n") == 1
    assert node(capsys, sock, "up", "--login-server=http://ctl:8080", "--reset")[0] == 0


@pytest.mark.parametrize(("argv", "needle"), [
    (["frobnicate"], "invalid choice"),
    (["status", "--bogus"], "unrecognized arguments: --bogus"),
    (["ping", "--timeout"], "expected one argument"),
    (["ping", "--timeout=soon", "alpha"], "invalid duration"),
    (["status", "--json=maybe"], "invalid boolean value 'maybe' for -json"),
    (["ip", "-4", "-6"], "not allowed"),
    (["up", "--login-server=http://c", "--timeout=1x"], "invalid duration"),
    (["set", "--advertise-routes=10.0.0/8"], "not an IP prefix"),
    (["up", "--login-server=http://c", "--advertise-routes=10.0.0.1/8"], "host bits"),
    (["switch", "--bogus"], "unrecognized arguments: --bogus"),
    (["switch"], "which profile"),
    (["configure", "systary"], "invalid choice: 'systary'"),
])  # fmt: skip
def test_wrong_invocations(node_sock: tuple[FakeBackend, str], capsys: pytest.CaptureFixture[str],
                           argv: list[str], needle: str) -> None:  # fmt: skip
    be, sock = node_sock
    code, _, err = node(capsys, sock, *argv)
    assert code == 2 and err.count("\n") == 1 and needle in err, err
    verb = argv[0] if argv[0] != "frobnicate" else ""
    assert f"usage: meshscale {verb}" in err, err  # the verb's usage on the same line
    assert be.calls == []


@pytest.mark.parametrize("argv", [
    ["up", "--login-server=http://c", "--advertise-routes", "10.0.0.0/33"],
    ["set", "--advertise-routes=10.0.0.1/8"],
    ["up", "--login-server=http://c", "--timeout=1x"],
    ["status", "--bogus"],
])  # fmt: skip
def test_wrong_invocations_need_no_daemon(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          argv: list[str]) -> None:  # fmt: skip
    """Refused while parsing: a usage error, not 'failed to connect', with no daemon running."""
    code, _, err = node(capsys, str(tmp_path / "absent.sock"), *argv)
    assert code == 2 and err.count("\n") == 1 and f"usage: meshscale {argv[0]}" in err, err
    assert "connect" not in err
