"""``meshscale configure``: upstream's subcommands are known and refused with a reason."""

from __future__ import annotations

import pytest
from tests.cli.localapi import run

from meshscale.cli.configure import SUBCOMMANDS

# Every subcommand tailscale's configure.go wires in (cmd/tailscale/cli/configure*.go).
UPSTREAM = {"kubeconfig", "systray", "synology", "synology-cert", "jetkvm", "sysext", "mac-vpn",
            "pve-appliance", "flash-appliance"}  # fmt: skip


def test_every_upstream_subcommand_is_known() -> None:
    assert set(SUBCOMMANDS) == UPSTREAM


@pytest.mark.parametrize(("argv", "needle"), [
    (["configure", "systray", "--enable-startup=systemd"], "no system tray client"),
    (["configure", "kubeconfig", "my-cluster", "--http"], "Kubernetes operator"),
    (["configure", "synology"], "meshscaled.service"),
    (["configure", "mac-vpn"], "macOS only"),
])  # fmt: skip
def test_refused_with_a_reason(daemon, capsys, argv: list[str], needle: str) -> None:
    be, sock = daemon
    code, out, err = run(capsys, sock, *argv)
    assert code == 1 and out == "" and err.count("\n") == 1
    assert err.startswith(f"meshscale: configure {argv[1]} is not supported: ") and needle in err
    assert be.calls == []  # nothing reached the daemon


@pytest.mark.parametrize(("argv", "needle"), [
    (["configure"], "which subcommand"),
    (["configure", "sshconfg"], "invalid choice: 'sshconfg'"),
])  # fmt: skip
def test_usage_errors(daemon, capsys, argv: list[str], needle: str) -> None:
    _, sock = daemon
    code, _, err = run(capsys, sock, *argv)
    assert code == 2 and err.count("\n") == 1 and needle in err and "usage: meshscale" in err
