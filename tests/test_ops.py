"""Operations: ``--version`` on every program, sd_notify readiness, the systemd units.

The units in packaging/systemd are checked the way systemd would read them: their
ExecStart names a program this package installs, with flags that program's own parser
accepts; where ``systemd-analyze`` exists it verifies them too.
"""

from __future__ import annotations

import configparser
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import meshscale
from meshscale.io.sdnotify import notify, notify_address

ROOT = Path(__file__).resolve().parents[1]
UNITS = ROOT / "packaging" / "systemd"
PROGRAMS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


@pytest.mark.parametrize("program", sorted(PROGRAMS))
def test_every_program_has_version(program: str) -> None:
    module = PROGRAMS[program].split(":")[0]
    go_style = program in {"meshscaled", "meshscale-derp"}  # tailscaled, derper: -version too
    for flag in ("--version", "-version") if go_style else ("--version",):
        out = subprocess.run([sys.executable, "-m", module, flag], capture_output=True,
                             text=True, timeout=30)  # fmt: skip
        assert out.returncode == 0, (program, flag, out.stderr)
        assert meshscale.__version__ in out.stdout.splitlines()[0], (program, out.stdout)


def _listener(tmp_path: Path) -> tuple[socket.socket, str]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify.sock")
    sock.bind(path)
    sock.settimeout(20)
    return sock, path


def test_sd_notify_paths_abstract_and_absent(tmp_path: Path) -> None:
    assert notify_address({}) is None and not notify("READY=1", {})
    assert notify_address({"NOTIFY_SOCKET": "vsock:2:1234"}) is None
    sock, path = _listener(tmp_path)
    with sock:
        assert notify("READY=1\nSTATUS=x", {"NOTIFY_SOCKET": path})
        assert sock.recv(4096) == b"READY=1\nSTATUS=x"
    abstract = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    name = f"meshscale-test-{os.getpid()}"
    with abstract:
        abstract.bind("\0" + name)
        abstract.settimeout(5)
        assert notify_address({"NOTIFY_SOCKET": "@" + name}) == "\0" + name
        assert notify("READY=1", {"NOTIFY_SOCKET": "@" + name})
        assert abstract.recv(100) == b"READY=1"
    # Nobody listening: a warning, not an exception.
    assert not notify("READY=1", {"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})


def test_relay_tells_systemd_when_ready_and_stopping(tmp_path: Path) -> None:
    sock, path = _listener(tmp_path)
    with sock:
        proc = subprocess.Popen(
            [sys.executable, "-m", "meshscale.relay.main", "-a", "127.0.0.1:0", "--plain-http",
             "-stun=false", "-c", str(tmp_path / "derper.key")],
            env={**os.environ, "NOTIFY_SOCKET": path}, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            assert sock.recv(4096).startswith(b"READY=1")
            proc.send_signal(signal.SIGTERM)
            assert sock.recv(4096) == b"STOPPING=1"
            assert proc.wait(20) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


def _unit(name: str) -> configparser.ConfigParser:
    cp = configparser.ConfigParser(interpolation=None, strict=False)
    cp.optionxform = str  # type: ignore[assignment,method-assign]
    cp.read(UNITS / name)
    return cp


def _exec_argv(unit: configparser.ConfigParser) -> list[str]:
    env = dict(e.split("=", 1) for e in unit["Service"].get("Environment", "").split())
    argv = shlex.split(unit["Service"]["ExecStart"])
    # systemd: ${VAR} is one word, $VAR splits into words (FLAGS is empty by default).
    out = []
    for word in argv:
        if word.startswith("$") and not word.startswith("${"):
            out.extend(env.get(word[1:], "").split())
        else:
            out.append(re.sub(r"\$\{(\w+)\}", lambda m: env[m.group(1)], word))
    return out


@pytest.mark.parametrize(
    ("unit_name", "program"),
    [("meshscaled.service", "meshscaled"), ("meshscale-control.service", "meshscale-control"),
     ("meshscale-derp.service", "meshscale-derp")],
)  # fmt: skip
def test_systemd_units_start_our_programs_with_flags_they_accept(
    unit_name: str, program: str
) -> None:
    unit = _unit(unit_name)
    svc = unit["Service"]
    assert svc["Type"] == "notify"  # all three send READY=1 (io/sdnotify.py)
    assert unit["Install"]["WantedBy"] == "multi-user.target"
    assert svc["StateDirectory"] == ("meshscale" if program == "meshscaled" else program)
    argv = _exec_argv(unit)
    assert Path(argv[0]).name == program and program in PROGRAMS
    if program == "meshscaled":
        from meshscale.node.main import build_parser, check_args

        args = build_parser().parse_args(argv[1:])
        assert check_args(args) is None
        assert args.state.startswith("/var/lib/meshscale/")
        assert args.socket.startswith("/run/" + svc["RuntimeDirectory"] + "/")
        assert "CAP_NET_ADMIN" in svc["CapabilityBoundingSet"].split()
    elif program == "meshscale-derp":
        from meshscale.relay.main import build_parser as relay_parser

        args = relay_parser().parse_args(argv[1:])
        assert args.certdir == "/etc/" + svc["ConfigurationDirectory"]
        assert svc["AmbientCapabilities"] == "CAP_NET_BIND_SERVICE"
    else:
        from meshscale.control.cli.common import hoist_persistent
        from meshscale.control.main import build_parser as control_parser

        args = control_parser().parse_args(hoist_persistent(argv[1:]))
        assert args.state_dir == "/var/lib/" + svc["StateDirectory"]
        assert svc["AmbientCapabilities"] == "CAP_NET_BIND_SERVICE"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_analyze_verifies_the_units(tmp_path: Path) -> None:
    bindir = Path(sys.executable).parent
    for unit in UNITS.glob("*.service"):
        # verify checks that ExecStart exists: point it at this environment's programs.
        text = unit.read_text().replace("/usr/local/bin/", f"{bindir}/")
        (tmp_path / unit.name).write_text(text)
    out = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *sorted(str(p) for p in tmp_path.iterdir())],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    problems = [
        line for line in out.stderr.splitlines()
        if any(u in line for u in ("meshscaled", "meshscale-control", "meshscale-derp"))
    ]  # fmt: skip
    assert out.returncode == 0 and not problems, out.stderr


def test_control_tells_systemd_when_ready_and_stopping(tmp_path: Path) -> None:
    sock, path = _listener(tmp_path)
    config = tmp_path / "config.yaml"
    config.write_text(
        "server_url: http://127.0.0.1:1\nlisten_addr: 127.0.0.1:0\nunix_socket: ctl.sock\n"
        "derp:\n  server:\n    enabled: false\n"
    )
    with sock:
        proc = subprocess.Popen(
            [sys.executable, "-m", "meshscale.control.main", "--state-dir", str(tmp_path),
             "serve", "-c", str(config)],
            env={**os.environ, "NOTIFY_SOCKET": path}, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            assert sock.recv(4096).startswith(b"READY=1")
            assert (tmp_path / "ctl.sock").exists()  # ready means serving: the socket is up
            proc.send_signal(signal.SIGTERM)
            assert sock.recv(4096) == b"STOPPING=1"
            assert proc.wait(20) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
