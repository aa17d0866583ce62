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
from pathlib import Path
from typing import Any

import pytest
from tests.control.test_main import Served, free_port, start_server, stop_server

pytestmark = pytest.mark.slow
FIELDS = json.loads((Path(__file__).parents[1] / "vectors/control/headscale-cli-json-fields.json")
                    .read_text())


def ctl(*argv: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "meshscale.control.main", *argv],
                          capture_output=True, text=True, timeout=60, input=stdin)


def check_shape(obj: dict[str, Any], kind: str) -> None:
    assert set(obj) <= set(FIELDS[kind]), set(obj) - set(FIELDS[kind])
    for key in ("created_at", "last_seen", "expiry", "expiration"):
        if key in obj:
            assert set(obj[key]) <= {"seconds", "nanos"} and isinstance(obj[key]["seconds"], int)
    assert isinstance(obj["id"], int)
    if "user" in obj and kind != "user":
        check_shape(obj["user"], "user")


def test_headscale_doc_commands(tmp_path: Path) -> None:
    from meshscale.testing.controlclient import ControlClient

    port = free_port()
    cfg = tmp_path / "config.yaml"
    cfg.write_text(f"server_url: http://127.0.0.1:{port}\nlisten_addr: 127.0.0.1:{port}\n"
                   f"unix_socket: {tmp_path}/ctl.sock\ndatabase:\n  type: sqlite\n"
                   f"  sqlite:\n    path: {tmp_path}/db.sqlite\n"
                   f"noise:\n  private_key_path: {tmp_path}/noise.key\n"
                   "derp:\n  server:\n    enabled: true\n    stun_listen_addr: 127.0.0.1:0\n"
                   "dns:\n  base_domain: tailnet.test\n")
    # `headscale serve -c FILE`: the flag after the verb (the README's own quick start).
    (tmp_path / "config.yaml").rename(tmp_path / "c.yaml")
    (tmp_path / "config.yaml").symlink_to(tmp_path / "c.yaml")
    served = Served(tmp_path, cfg, port, start_server(tmp_path, port))
    try:
        c = str(cfg)
        assert ctl("users", "create", "alice", "-c", c).returncode == 0
        users = json.loads(ctl("users", "list", "-o", "json", "-c", c).stdout)
        assert [u["name"] for u in users] == ["alice"]
        check_shape(users[0], "user")
        out = ctl("preauthkeys", "create", "--user", "alice", "--reusable", "--expiration", "1h",
                  "-o", "json", "-c", c)
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
