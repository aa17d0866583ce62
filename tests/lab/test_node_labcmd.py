"""The README's main command: ``scripts/lab --once`` shows direct and relayed paths."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "lab"


@pytest.mark.lab
@pytest.mark.slow
def test_scripts_lab_once_shows_direct_and_relay(need_lab: None) -> None:
    t0 = time.monotonic()
    res = subprocess.run(
        ["bash", str(SCRIPT), "--once"],
        capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    took = time.monotonic() - t0
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    out = res.stdout
    assert "all 5 nodes Running" in out
    assert out.count("$ meshscale status") == 5
    assert "active; direct 203.0.113." in out and 'active; relay "lab"' in out
    assert "via DERP(lab)" in out and "pong from easy2" in out
    # MagicDNS through the node's own resolver, the policy file in force, the console answering.
    dns = out.split("MagicDNS", 1)[1].split("policy:", 1)[0]
    assert "not found" not in dns and dns.count(" 100.64.") == 2, dns
    exits = out.split("$ meshscale exit-node list", 1)[1].split("MagicDNS", 1)[0]
    assert " public " in exits, exits
    assert "policy: " in out and "admin console: https://ctl.lab/admin (HTTP 303" in out
    assert took < 60, f"the demo took {took:.0f}s"


def test_demo_refuses_bad_flags() -> None:
    """`python -m meshscale.lab` takes the flags the old `meshscale lab` verb took."""
    res = subprocess.run(
        [sys.executable, "-m", "meshscale.lab", "--nodes", "9"],
        capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert res.returncode == 2 and "--nodes" in res.stderr, res.stderr
