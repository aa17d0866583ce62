"""``nodes backfillips`` (Headscale's verb): nodes registered before ``prefixes.v6`` was
configured get an IPv6 address, and addresses of a family no longer configured go."""

from __future__ import annotations

import json
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path

import pytest
from tests.control.test_main import free_port, run, start_server, stop_server

from meshscale.control.state import State
from meshscale.control.state.options import StateOptions
from meshscale.key import MachinePublic, NodePublic

V4, V6 = IPv4Network("100.64.0.0/10"), IPv6Network("fd7a:115c:a1e0::/48")


def _register(db: Path, options: StateOptions, n: int) -> None:
    state = State.open(db, options)
    try:
        user = state.create_user("alice")
        key = state.create_preauth_key(user.id, reusable=True).secret
        for i in range(1, n + 1):
            state.register_with_preauth_key(
                key, MachinePublic(bytes([i]) * 32), NodePublic(bytes([i]) * 32),
                {"Hostname": f"n{i}"},
            )  # fmt: skip
    finally:
        state.close()


def test_backfill_adds_a_new_family_and_drops_a_removed_one(tmp_path: Path) -> None:
    db = tmp_path / "db.sqlite"
    _register(db, StateOptions(prefix_v4=V4, prefix_v6=None), 2)
    state = State.open(db, StateOptions(prefix_v4=V4, prefix_v6=V6))
    try:
        assert all(n.ipv6 is None for n in state.list_nodes())
        changes = state.backfill_ips()
        assert len(changes) == 2 and all("assigned IPv6 fd7a:115c:a1e0::" in c for c in changes)
        v6 = [n.ipv6 for n in state.list_nodes()]
        assert None not in v6 and len(set(v6)) == 2
        assert state.backfill_ips() == []  # idempotent
    finally:
        state.close()
    state = State.open(db, StateOptions(prefix_v4=None, prefix_v6=V6))
    try:
        assert all("removed IPv4" in c for c in state.backfill_ips())
        assert all(n.ipv4 is None and n.ipv6 is not None for n in state.list_nodes())
    finally:
        state.close()


@pytest.mark.slow
def test_cli_backfillips_asks_then_backfills(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _register(tmp_path / "db.sqlite", StateOptions(prefix_v4=V4, prefix_v6=None), 1)
    port = free_port()
    config = tmp_path / "config.yaml"
    config.write_text(
        f"server_url: http://127.0.0.1:{port}\nlisten_addr: 127.0.0.1:{port}\n"
        "unix_socket: ctl.sock\nderp:\n  server:\n    enabled: false\n"
        f"prefixes:\n  v4: {V4}\n  v6: {V6}\n"
    )
    proc = start_server(tmp_path, port)
    cli = ["-c", str(config), "--state-dir", str(tmp_path)]
    try:
        code, _, err = run(capsys, *cli, "nodes", "backfillips")  # no terminal, no --force
        assert code == 2 and "--force" in err and err.count("\n") == 1
        code, out, err = run(capsys, *cli, "nodes", "backfillips", "--force", "-o", "json")
        assert code == 0, err
        assert ["assigned IPv6" in c for c in json.loads(out)] == [True]
        code, out, _ = run(capsys, *cli, "nodes", "list", "-o", "json")
        assert len(json.loads(out)[0]["ip_addresses"]) == 2
    finally:
        stop_server(proc)
