"""``meshscale-control`` (main.py) end to end: a real ``serve`` subprocess, the CLI over its
unix socket and over HTTP with an API key, and a ts2021 test client registering nodes."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from meshscale.control.cli import AdminClient, AdminError
from meshscale.control.main import main

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Served:
    dir: Path
    config: Path
    port: int
    proc: subprocess.Popen[bytes]

    def cli(self, *args: str) -> list[str]:
        return ["-c", str(self.config), "--state-dir", str(self.dir), *args]


def start_server(tmp: Path, port: int, argv: list[str] | None = None) -> subprocess.Popen[bytes]:
    """``meshscale-control -c tmp/config.yaml --state-dir tmp serve``, or ``argv`` after the
    program name; returns once the server answers on TCP and on its unix socket."""
    log = (tmp / "server.log").open("ab")
    words = argv or ["-c", str(tmp / "config.yaml"), "--state-dir", str(tmp), "serve"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "meshscale.control.main", *words],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    log.close()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError("serve exited: " + (tmp / "server.log").read_text())
        try:
            with socket.create_connection(("127.0.0.1", port), 0.2):
                pass
            # The unix socket answers (a stale one from a killed run refuses).
            AdminClient(unix_socket=str(tmp / "ctl.sock"), timeout=1).request(
                "GET", "/api/v1/health"
            )
            return proc
        except (OSError, AdminError):
            pass
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("serve did not start: " + (tmp / "server.log").read_text())


def stop_server(proc: subprocess.Popen[bytes]) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
            raise
    return proc.returncode


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    port = free_port()
    config = tmp_path / "config.yaml"
    config.write_text(
        f"server_url: http://127.0.0.1:{port}\n"
        f"listen_addr: 127.0.0.1:{port}\n"
        "unix_socket: ctl.sock\n"
        "derp:\n  server:\n    enabled: true\n    stun_listen_addr: 127.0.0.1:0\n"
        "dns:\n  base_domain: tailnet.test\n"
    )
    served = Served(tmp_path, config, port, start_server(tmp_path, port))
    try:
        yield served
    finally:
        stop_server(served.proc)  # the test may have restarted it


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys: pytest.CaptureFixture[str], served: Served, *argv: str) -> Any:
    code, out, err = run(capsys, *served.cli("-o", "json", *argv))
    assert code == 0, err
    return json.loads(out)


def test_cli_end_to_end(served: Served, capsys: pytest.CaptureFixture[str]) -> None:
    from meshscale.testing.controlclient import ControlClient

    # users
    code, out, _ = run(capsys, *served.cli("users", "create", "alice", "--email", "a@x.org"))
    assert code == 0 and "alice" in out
    assert run(capsys, *served.cli("users", "create", "bob"))[0] == 0
    code, out, _ = run(capsys, *served.cli("users", "list"))
    assert code == 0 and "alice" in out and "a@x.org" in out and "bob" in out
    users = run_json(capsys, served, "users", "list")
    assert [u["name"] for u in users] == ["alice", "bob"]
    code, _, err = run(capsys, *served.cli("users", "create", "alice"))
    assert code == 1 and err.count("\n") == 1 and "already exists" in err
    assert run(capsys, *served.cli("users", "rename", "-n", "bob", "-r", "robert"))[0] == 0
    # json-line and yaml outputs
    code, out, _ = run(capsys, *served.cli("-o", "json-line", "users", "list"))
    assert out.count("\n") == 1 and json.loads(out)[1]["name"] == "robert"
    code, out, _ = run(capsys, *served.cli("-o", "yaml", "users", "list"))
    assert "name: robert" in out

    # pre-auth keys
    key = run_json(
        capsys,
        served,
        "preauthkeys",
        "create",
        "-u",
        "alice",
        "--reusable",
        "--expiration",
        "24h",
        "--tags",
        "tag:ci",
    )
    assert key["key"].startswith("hskey-auth-") and key["acl_tags"] == ["tag:ci"]
    code, out, _ = run(capsys, *served.cli("preauthkeys", "list", "-u", "alice"))
    assert code == 0 and key["key"][:23] in out and key["key"] not in out
    single = run_json(capsys, served, "preauthkeys", "create", "-u", "robert")

    # nodes: one by pre-auth key, one by interactive registration completed from the CLI
    async def register() -> tuple[str, str]:
        a = ControlClient("127.0.0.1", served.port, hostname="ci-runner")
        await a.connect()
        resp = await a.register(auth_key=key["key"])
        assert resp.MachineAuthorized and not resp.Error, resp
        b = ControlClient("127.0.0.1", served.port, hostname="laptop")
        await b.connect()
        first = await b.register()
        assert first.AuthURL.startswith(f"http://127.0.0.1:{served.port}/register/")
        reg_id = first.AuthURL.rsplit("/", 1)[1]
        followup = asyncio.create_task(b.register(followup=first.AuthURL))
        await asyncio.sleep(0.2)
        loop = asyncio.get_running_loop()
        code, out, _ = await loop.run_in_executor(
            None, run, capsys, *served.cli("nodes", "pending")
        )
        assert code == 0 and reg_id in out and "laptop" in out
        code, out, err = await loop.run_in_executor(
            None, run, capsys, *served.cli("nodes", "register", "--user", "robert", "--key", reg_id)
        )
        assert code == 0, err
        done = await asyncio.wait_for(followup, 10)
        assert done.MachineAuthorized and not done.AuthURL
        c = ControlClient("127.0.0.1", served.port, hostname="other")
        await c.connect()
        used = await c.register(auth_key=single["key"])
        again = ControlClient("127.0.0.1", served.port, hostname="other2")
        await again.connect()
        refused = await again.register(auth_key=single["key"])
        for client in (a, b, c, again):
            await client.close()
        assert not used.Error
        return refused.Error, out

    refused, registered = asyncio.run(register())
    assert refused == "authkey already used"
    assert "laptop" in registered
    nodes = run_json(capsys, served, "nodes", "list")
    assert [n["given_name"] for n in nodes] == ["ci-runner", "laptop", "other"]
    assert nodes[0]["tags"] == ["tag:ci"] and nodes[0]["user"]["name"] == "alice"
    assert nodes[1]["register_method"] == 2  # REGISTER_METHOD_CLI, a number
    code, out, _ = run(capsys, *served.cli("nodes", "list", "-u", "robert"))
    assert "laptop" in out and "ci-runner" not in out
    nid = str(nodes[1]["id"])
    assert run(capsys, *served.cli("nodes", "rename", "-i", nid, "work-laptop"))[0] == 0
    assert run(capsys, *served.cli("nodes", "tag", "-i", nid, "-t", "tag:a,tag:b"))[0] == 0
    assert run(capsys, *served.cli("nodes", "move", "-i", nid, "-u", "alice"))[0] == 0
    assert (
        run(capsys, *served.cli("nodes", "approve-routes", "-i", nid, "-r", "10.1.0.0/16"))[0] == 0
    )
    assert run(capsys, *served.cli("nodes", "expire", "-i", nid))[0] == 0
    node = run_json(capsys, served, "nodes", "list")[1]
    assert (node["given_name"], node["tags"], node["user"]["name"]) == (
        "work-laptop",
        ["tag:a", "tag:b"],
        "alice",
    )
    assert node["approved_routes"] == ["10.1.0.0/16"] and "expiry" in node
    code, _, err = run(capsys, *served.cli("users", "delete", "-n", "alice", "--force"))
    assert code == 1 and "still has nodes" in err
    for n in nodes:
        assert run(capsys, *served.cli("nodes", "delete", "-i", str(n["id"]), "--force"))[0] == 0
    assert run_json(capsys, served, "nodes", "list") == []
    code, _, err = run(capsys, *served.cli("nodes", "delete", "-i", nid, "--force"))
    assert code == 1 and "not found" in err

    # API keys and the remote (HTTP + Bearer) path
    code, secret, _ = run(capsys, *served.cli("apikeys", "create", "-e", "1h"))
    secret = secret.strip()
    assert code == 0 and secret.startswith("hskey-api-")
    url = f"http://127.0.0.1:{served.port}"
    code, out, _ = run(capsys, *served.cli("--url", url, "--api-key", secret, "users", "list"))
    assert code == 0 and "alice" in out
    # A different last character, always: "0" alone would be the same key one time in sixteen.
    forged = secret[:-1] + ("1" if secret.endswith("0") else "0")
    code, _, err = run(capsys, *served.cli("--url", url, "--api-key", forged, "users", "list"))
    assert code == 1 and "invalid API key" in err
    code, _, err = run(capsys, *served.cli("--url", url, "users", "list"))
    assert code == 2 and "--api-key" in err
    prefix = secret[len("hskey-api-") :][:12]
    assert run(capsys, *served.cli("apikeys", "expire", "-p", prefix))[0] == 0
    code, _, err = run(capsys, *served.cli("--url", url, "--api-key", secret, "users", "list"))
    assert code == 1 and "expired" in err
    keys = run_json(capsys, served, "apikeys", "list")
    assert [k["prefix"] for k in keys] == [prefix]


def test_policy_cli_in_file_mode(
    served: Served, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert run(capsys, *served.cli("policy", "get")) == (0, "\n", "")
    pol = tmp_path / "p.hujson"
    pol.write_text('{"acls": []}')
    code, _, err = run(capsys, *served.cli("policy", "set", "-f", str(pol)))
    assert code == 1 and "policy.mode is file" in err and err.count("\n") == 1
    code, _, err = run(capsys, *served.cli("policy", "set", "-f", str(tmp_path / "nope")))
    assert code == 2 and "cannot read" in err


def test_state_survives_restart(served: Served, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, *served.cli("users", "create", "alice"))[0] == 0
    key = run_json(capsys, served, "preauthkeys", "create", "-u", "alice")
    assert stop_server(served.proc) == 0  # SIGTERM is a clean shutdown
    assert not (served.dir / "ctl.sock").exists()
    served.proc = start_server(served.dir, served.port)
    keys = run_json(capsys, served, "preauthkeys", "list")
    assert [k["id"] for k in keys] == [key["id"]]
    assert "used" not in keys[0]  # omitempty, as Headscale prints


def test_usage_errors_are_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for argv in (
        ["nodes", "bogus"],
        ["preauthkeys", "create"],
        ["-o", "xml", "users", "list"],
        ["nodes", "delete"],
        [],
    ):
        code, _, err = run(capsys, "--state-dir", str(tmp_path), *argv)
        assert code == 2, argv
        assert err.count("\n") == 1, err
    code, _, err = run(capsys, "--state-dir", str(tmp_path), "preauthkeys", "expire")
    assert code == 2 and err.count("\n") == 1
    code, _, err = run(capsys, "--state-dir", str(tmp_path), "users", "list")
    assert code == 1 and "cannot reach the server" in err and err.count("\n") == 1
    bad = tmp_path / "bad.yaml"
    bad.write_text("prefixes:\n  allocation: clever\n")
    code, _, err = run(capsys, "-c", str(bad), "configtest")
    assert code == 2 and err == (
        "meshscale-control: config: prefixes.allocation: want sequential or random, got 'clever'\n"
    )


def test_console_script_entry_point(tmp_path: Path) -> None:
    exe = shutil.which("meshscale-control", path=str(Path(sys.executable).parent))
    assert exe is not None
    out = subprocess.run(
        [exe, "--state-dir", str(tmp_path), "configtest"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0 and "config OK (defaults)" in out.stdout
    out = subprocess.run([exe, "version"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and out.stdout.startswith("meshscale-control 0.")
    out = subprocess.run([exe, "users", "frobnicate"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and out.stderr.count("\n") == 1


def test_sigkill_after_acknowledged_registration(
    served: Served, capsys: pytest.CaptureFixture[str]
) -> None:
    """A node the server acknowledged over ts2021 is still there after kill -9."""
    from meshscale.testing.controlclient import ControlClient

    assert run(capsys, *served.cli("users", "create", "alice"))[0] == 0
    key = run_json(capsys, served, "preauthkeys", "create", "-u", "alice", "--reusable")

    async def register() -> list[str]:
        names = []
        for i in range(3):
            c = ControlClient("127.0.0.1", served.port, hostname=f"k{i}")
            await c.connect()
            resp = await c.register(auth_key=key["key"])
            assert resp.MachineAuthorized and not resp.Error
            names.append(f"k{i}")
            await c.close()
        return names

    acked = asyncio.run(register())
    served.proc.kill()  # SIGKILL: no shutdown code runs
    served.proc.wait(10)
    assert served.proc.returncode == -signal.SIGKILL
    served.proc = start_server(served.dir, served.port)  # also replaces the stale socket
    nodes = run_json(capsys, served, "nodes", "list")
    assert [n["given_name"] for n in nodes] == acked


def test_json_log_format(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("log:\n  level: warn\n  format: json\nfoo: 1\n")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "meshscale.control.main",
            "-c",
            str(cfg),
            "--state-dir",
            str(tmp_path),
            "configtest",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0
    line = json.loads(out.stderr.strip().splitlines()[0])
    assert line["level"] == "warn"
    assert line["message"] == "config: foo: unknown key, ignored"


def test_startup_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from meshscale.control.config import config_from_mapping
    from meshscale.control.main import run as run_server

    base: dict[str, Any] = {
        "listen_addr": "127.0.0.1:0",
        "unix_socket": "ctl.sock",
        "derp": {"server": {"enabled": False}},
    }
    cases: list[tuple[dict[str, Any], str]] = [
        (
            {"tls_cert_path": "/nope/c.pem", "tls_key_path": "/nope/k.pem"},
            "config: tls_cert_path/tls_key_path: cannot load /nope/c.pem",
        ),
        (
            {"policy": {"mode": "file", "path": "/nope/policy.hujson"}},
            "config: policy.path: cannot read",
        ),
    ]
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        cases.append(({"listen_addr": f"127.0.0.1:{busy.getsockname()[1]}"}, "cannot start:"))
        for extra, want in cases:
            cfg = config_from_mapping({**base, **extra}, tmp_path)
            assert run_server(cfg) == 1
            err = capsys.readouterr().err.strip().splitlines()[-1]
            assert err.startswith(f"meshscale-control: {want}"), err


def test_second_server_on_the_same_socket_is_refused(
    served: Served, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from meshscale.control.config import load_config
    from meshscale.control.main import run as run_server

    other = tmp_path / "other.yaml"
    other.write_text(
        served.config.read_text().replace(
            f"listen_addr: 127.0.0.1:{served.port}", "listen_addr: 127.0.0.1:0"
        )
    )
    cfg = load_config(other, state_dir=served.dir)
    assert run_server(cfg) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "another server is running" in err
    assert run(capsys, *served.cli("users", "list"))[0] == 0  # the first one is unharmed
