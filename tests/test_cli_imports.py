"""The CLIs start fast: what their client-side verbs import (README #13, the habits).

``meshscale-control`` is both the server and its admin CLI, and ``meshscale`` is a client of
meshscaled's local API. Their client verbs must not load the server (state, db, policy, app)
or the data plane (TUN, packet offload and numpy, WireGuard, pyroute2, cryptography): that
cost ~1.5 s of imports per command. Deterministic: each check runs a fresh interpreter and
lists ``sys.modules``; no timing.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# Server- or data-plane-only modules (and the heavy libraries behind them).
SERVER_ONLY = (
    "meshscale.control.state",
    "meshscale.control.server",
    "meshscale.control.db",
    "meshscale.control.app",
    "meshscale.control.models",
    "meshscale.control.policyfile",
    "meshscale.control.api",
    "meshscale.control.mapper",
    "meshscale.policy",
    "meshscale.derp",
    "meshscale.relay",
    "meshscale.key",
    "meshscale.tailcfg",
    "prometheus_client",
)
DATAPLANE_ONLY = (
    "meshscale.packet",
    "meshscale.io.tun",
    "meshscale.io.udp",
    "meshscale.io.timer",
    "meshscale.wireguard",
    "meshscale.wgengine.engine",
    "meshscale.wgengine.router.netlink",
    "meshscale.magicsock",
    "meshscale.node",
    "numpy",
    "pyroute2",
    "cryptography",
)
# Not needed to print a version or a usage: only the verbs that print tables or talk.
PRINT_OR_TALK = ("rich", "yaml", "asyncio", "h11", "meshscale.io.httpclient")

SCRIPT = """
import json, sys
from {module} import main
for argv in {argvs!r}:
    try:
        code = main(argv)
    except SystemExit as exc:  # --help
        code = exc.code
    print(json.dumps({{"argv": argv, "code": code, "modules": sorted(sys.modules)}}))
"""


def _modules_after(module: str, *argvs: list[str], tmp_path: Path) -> list[dict[str, object]]:
    """Run ``main(argv)`` for each argv in one fresh interpreter; sys.modules after each."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESHSCALE")}
    env["HOME"] = str(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT.format(module=module, argvs=[list(a) for a in argvs])],
        capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith('{"argv"')]
    assert len(lines) == len(argvs), proc.stdout
    return [json.loads(line) for line in lines]


def _loaded(modules: object, names: tuple[str, ...]) -> list[str]:
    assert isinstance(modules, list)
    return sorted(m for m in modules if any(m == n or m.startswith(n + ".") for n in names))


def test_forbidden_names_are_real_modules() -> None:
    # A misspelt name would make the checks below pass vacuously.
    for name in SERVER_ONLY + DATAPLANE_ONLY + PRINT_OR_TALK:
        assert importlib.util.find_spec(name) is not None, name


def test_control_cli_client_verbs_import_no_server(tmp_path: Path) -> None:
    sock = str(tmp_path / "none.sock")
    state = ["--state-dir", str(tmp_path)]
    version, helps, users, nodes = _modules_after(
        "meshscale.control.main",
        ["version"],
        ["--help"],
        [*state, "--socket", sock, "users", "list"],
        [*state, "--socket", sock, "-o", "json", "nodes", "list"],
        tmp_path=tmp_path,
    )
    assert version["code"] == 0
    assert helps["code"] == 0
    assert users["code"] == 1  # no server there: a clean error, after the client ran
    assert nodes["code"] == 1
    for run in (version, helps, users, nodes):
        assert _loaded(run["modules"], SERVER_ONLY + DATAPLANE_ONLY) == [], run["argv"]
    for run in (version, helps):
        assert _loaded(run["modules"], PRINT_OR_TALK) == [], run["argv"]
    assert "meshscale.io.httpclient" in _loaded(users["modules"], PRINT_OR_TALK)


def test_node_cli_verbs_import_no_dataplane(tmp_path: Path) -> None:
    sock = str(tmp_path / "none.sock")
    version, helps, status, ping = _modules_after(
        "meshscale.cli.main",
        ["version"],
        ["--help"],
        ["--socket", sock, "status"],
        ["--socket", sock, "ping", "peer"],
        tmp_path=tmp_path,
    )
    assert version["code"] == 0
    assert helps["code"] == 0
    assert status["code"] == 1  # no meshscaled there
    assert ping["code"] == 1
    for run in (version, helps, status, ping):
        assert _loaded(run["modules"], SERVER_ONLY + DATAPLANE_ONLY) == [], run["argv"]
    for run in (version, helps):
        assert _loaded(run["modules"], PRINT_OR_TALK) == [], run["argv"]
    assert "meshscale.io.httpclient" in _loaded(status["modules"], PRINT_OR_TALK)


@pytest.mark.parametrize(
    "package", ["meshscale.io", "meshscale.wgengine", "meshscale.wgengine.router"]
)
def test_lazy_package_names_resolve(package: str) -> None:
    mod = importlib.import_module(package)
    for name in mod.__all__:
        assert getattr(mod, name) is not None, name
    with pytest.raises(AttributeError, match="no_such_name"):
        _ = mod.no_such_name


def test_serve_verb_still_loads_the_server() -> None:
    from meshscale.control import main, server

    assert main.PROG == server.PROG
    assert main.run.__module__ == "meshscale.control.main"
