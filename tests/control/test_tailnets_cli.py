"""``meshscale-control tailnets`` and the ``--tailnet`` options against a real ``serve``
subprocess (issue #16): admin over the unix socket, a tailnet-scoped API key over TCP."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from .test_main import Served, free_port, run, run_json, start_server, stop_server

pytestmark = pytest.mark.slow


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    port = free_port()
    config = tmp_path / "config.yaml"
    config.write_text(
        f"server_url: http://127.0.0.1:{port}\nlisten_addr: 127.0.0.1:{port}\n"
        "unix_socket: ctl.sock\nderp:\n  server:\n    enabled: false\n"
        "  urls: []\npolicy:\n  mode: database\n"
    )
    s = Served(tmp_path, config, port, start_server(tmp_path, port))
    try:
        yield s
    finally:
        stop_server(s.proc)


def test_tailnets_cli(served: Served, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    def ok(*argv: str) -> str:
        code, out, err = run(capsys, *served.cli(*argv))
        assert code == 0, (argv, err)
        return out

    assert ok("tailnets", "create", "acme") == "Tailnet 'acme' created (id 2)\n"
    code, _, err = run(capsys, *served.cli("tailnets", "create", "acme"))
    assert code == 1 and "already exists" in err
    ok("users", "create", "alice")
    ok("users", "create", "bob", "--tailnet", "acme")
    ok("users", "create", "alice", "--tailnet", "acme")  # a name per tailnet
    rows = run_json(capsys, served, "tailnets", "list")
    assert [(t["name"], t["users"]) for t in rows] == [("default", 1), ("acme", 2)]
    assert [u["name"] for u in run_json(capsys, served, "users", "list", "--tailnet", "acme")] \
        == ["bob", "alice"]  # fmt: skip
    # preauthkeys create --user U: U's tailnet; an ambiguous name needs --tailnet
    key = run_json(capsys, served, "preauthkeys", "create", "--user", "bob")
    assert key["user"]["tailnet_id"] == 2
    code, _, err = run(capsys, *served.cli("preauthkeys", "create", "--user", "alice"))
    assert code == 1 and "several tailnets" in err
    ok("preauthkeys", "create", "--user", "alice", "--tailnet", "default")
    keys = run_json(capsys, served, "preauthkeys", "list", "--tailnet", "acme")
    assert [k["user"]["name"] for k in keys] == ["bob"]
    assert run_json(capsys, served, "nodes", "list", "--tailnet", "acme") == []
    # a policy per tailnet
    pol = tmp_path / "p.hujson"
    pol.write_text('{"acls": []}')
    assert "version 1" in ok("policy", "set", "-f", str(pol), "--tailnet", "acme")
    assert ok("policy", "get", "--tailnet", "acme") == '{"acls": []}\n'
    assert ok("policy", "get") == "\n"
    # delete refuses a non-empty tailnet, with the reason
    code, _, err = run(capsys, *served.cli("tailnets", "delete", "acme", "--force"))
    assert code == 1 and "not empty: it has 2 user(s) and 0 node(s)" in err, err
    assert ok("tailnets", "rename", "acme", "acme2") == "Tailnet 'acme' renamed to 'acme2'\n"
    # a key scoped to acme2, used over TCP: its tailnet only
    scoped = ok("apikeys", "create", "--tailnet", "acme2").strip()
    remote = ["--url", f"http://127.0.0.1:{served.port}", "--api-key", scoped]
    code, out, err = run(capsys, *served.cli("-o", "json", *remote, "users", "list"))
    assert code == 0, err
    assert sorted(u["name"] for u in json.loads(out)) == ["alice", "bob"]
    assert all(u["tailnet_id"] == 2 for u in json.loads(out))
    code, _, err = run(capsys, *served.cli(*remote, "tailnets", "create", "evil"))
    assert code == 1 and "server admins" in err, err
    code, _, err = run(capsys, *served.cli(*remote, "users", "list", "--tailnet", "default"))
    assert code == 1 and "not found" in err, err
    ok("users", "delete", "bob", "--tailnet", "acme2", "--force")
    ok("users", "delete", "alice", "--tailnet", "acme2", "--force")
    assert ok("tailnets", "delete", "acme2", "--force") == "Tailnet 'acme2' deleted\n"
    assert [t["name"] for t in run_json(capsys, served, "tailnets", "list")] == ["default"]
