"""lab/tailscale.py without namespaces: a tailscaled left in Starting gets its engine polled.

tailscaled 1.96.4 can process a stale engine status (LiveDERPs 0) after a fresh one and then
stay in Starting with its DERP connected (see meshscale.lab.tailscale). The wrapper polls the
engine (as the desktop apps do) when `up` fails in Starting, or when a wait for Running sees
Starting for STUCK_STARTING seconds, and only then."""

from __future__ import annotations

import subprocess

import pytest

from meshscale.lab import tailscale
from meshscale.lab.netns import LabError
from meshscale.lab.tailscale import TailscaleNode


class FakeNode(TailscaleNode):
    """A TailscaleNode whose daemon is a list of states; polling its engine fixes a stuck one."""

    def __init__(self, states: list[str], *, polling_fixes: bool = True) -> None:
        self.name = "n1"
        self.states = states
        self.polls = 0
        self.polling_fixes = polling_fixes

    def backend_state(self) -> str:
        return self.states[0] if len(self.states) == 1 else self.states.pop(0)

    def poll_engine(self, seconds: float = tailscale.ENGINE_POLL) -> str:
        self.polls += 1
        if self.polling_fixes and self.states == ["Starting"]:
            self.states = ["Running"]
        return ""

    def cli(
        self, *args: str, check: bool = True, timeout: float = 30.0
    ) -> subprocess.CompletedProcess[str]:
        raise subprocess.CalledProcessError(
            1, ["tailscale", *args], "", "timeout waiting for Running"
        )

    def log_text(self) -> str:
        return ""


@pytest.fixture(autouse=True)
def short_stuck(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tailscale, "STUCK_STARTING", 0.3)


def test_up_that_timed_out_in_starting_is_rescued_by_an_engine_poll(
    capsys: pytest.CaptureFixture[str],
) -> None:
    node = FakeNode(["Starting"])
    node.up("https://ctl.lab", "key", hostname="n1", timeout=1)
    assert node.polls == 1
    assert node.backend_state() == "Running"
    assert "engine status was polled" in capsys.readouterr().err


def test_up_that_failed_otherwise_still_raises() -> None:
    node = FakeNode(["NeedsLogin"])
    with pytest.raises(LabError, match="tailscale up"):
        node.up("https://ctl.lab", "key", timeout=1)
    assert node.polls == 0
    stuck = FakeNode(["Starting"], polling_fixes=False)  # polling does not help: a real failure
    with pytest.raises(LabError, match="tailscale up"):
        stuck.up("https://ctl.lab", "key", timeout=1)
    assert stuck.polls == 1


def test_wait_for_running_polls_once_after_stuck_starting() -> None:
    node = FakeNode(["Starting"])
    assert node.wait_backend_state("Running", timeout=5) == "Running"
    assert node.polls == 1
    quick = FakeNode(["Starting", "Starting", "Running"])  # the normal case: no poll
    assert quick.wait_backend_state("Running", timeout=5) == "Running"
    assert quick.polls == 0
    other = FakeNode(["Starting"])  # waiting for another state: left alone
    with pytest.raises(LabError):
        other.wait_backend_state("NeedsLogin", timeout=0.6)
    assert other.polls == 0
