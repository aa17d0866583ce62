"""``meshscale-control policy get|set|check|history|rollback`` against a real ``serve``
subprocess in ``policy.mode: database``: refusals exit non-zero with the policy's message."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from .test_main import Served, free_port, run, start_server, stop_server

pytestmark = pytest.mark.slow

GOOD = '{\n  // comment\n  "acls": [{"action": "accept", "src": ["*"], "dst": ["*:22"]},],\n}\n'
BAD = '{\n  "acls": [\n    {"action": "accept", "src": ["group:nosuch"], "dst": ["*:*"]}]}\n'


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


def test_policy_verbs(served: Served, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    good, bad = tmp_path / "good.hujson", tmp_path / "bad.hujson"
    good.write_text(GOOD)
    bad.write_text(BAD)
    code, out, err = run(capsys, *served.cli("policy", "check", "-f", str(bad)))
    assert code == 1 and 'undefined group "group:nosuch" at 3:34' in err, err
    code, out, err = run(capsys, *served.cli("policy", "check", "-f", str(good)))
    assert (code, out) == (0, "Policy is valid\n"), err
    assert run(capsys, *served.cli("policy", "set", "-f", str(good)))[1] == (
        "Policy updated (version 1)\n"
    )
    code, _, err = run(capsys, *served.cli("policy", "set", "-f", str(bad)))
    assert code == 1 and "group:nosuch" in err
    assert run(capsys, *served.cli("policy", "get"))[1] == GOOD + "\n"
    good.write_text('{"acls": []}')
    assert run(capsys, *served.cli("policy", "set", "-f", str(good)))[0] == 0
    code, out, _ = run(capsys, *served.cli("policy", "rollback", "--version", "1"))
    assert code == 0 and "now version 3" in out
    code, out, _ = run(capsys, *served.cli("-o", "json", "policy", "history"))
    rows = json.loads(out)
    assert [(r["version"], r["source"]) for r in rows] == [
        (3, "rollback to 1"),
        (2, "api"),
        (1, "api"),
    ]
    code, out, _ = run(capsys, *served.cli("policy", "history"))
    assert code == 0 and "rollback to 1" in out
    code, _, err = run(capsys, *served.cli("policy", "rollback", "7"))
    assert code == 1 and "policy version 7 not found" in err
    code, _, err = run(capsys, *served.cli("policy", "rollback"))
    assert code == 2 and "--version" in err
