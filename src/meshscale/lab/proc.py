"""Processes started inside lab namespaces.

Each process is the leader of its own session (start_new_session), so stopping it can signal the
whole process group by its id: a shell wrapper and the daemon it starts go together. Nothing is
ever killed by name. While any member of the group lives, Linux does not reuse its id, so
signalling the group after the leader has been reaped cannot hit a stranger.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

# How long stop() waits after SIGTERM before SIGKILL, and after SIGKILL before giving up.
STOP_GRACE = 5.0  # seconds
KILL_WAIT = 5.0  # seconds


class Proc:
    """A process running in a lab namespace, with stdout and stderr sent to one log file."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | str | None = None,
    ) -> None:
        self.argv = list(argv)
        self.log_path = log_path
        full_env = dict(os.environ)
        if env is not None:
            full_env.update(env)
        with open(log_path, "ab") as log:
            self.popen: subprocess.Popen[bytes] = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=full_env,
                cwd=cwd,
                start_new_session=True,
            )
        self.pid: int = self.popen.pid

    def __repr__(self) -> str:
        return f"<Proc pid={self.pid} {self.argv!r} rc={self.popen.returncode}>"

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    @property
    def running(self) -> bool:
        return self.popen.poll() is None

    def wait(self, timeout: float | None = None) -> int:
        """Wait for exit and return the exit code; raises subprocess.TimeoutExpired."""
        return self.popen.wait(timeout)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _signal_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)

    def terminate(self) -> None:
        """Send SIGTERM to the process group without waiting."""
        if self.running:
            self._signal_group(signal.SIGTERM)

    def _exited_unreaped(self, timeout: float) -> bool:
        """Wait up to `timeout` for the leader to exit, leaving it a zombie (not reaped).

        A zombie leader keeps its id reserved, so the group can still be signalled safely.
        """
        deadline = time.monotonic() + timeout
        while True:
            try:
                info = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return True  # Already reaped elsewhere.
            if info is not None:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)

    def stop(self, grace: float = STOP_GRACE) -> int | None:
        """SIGTERM the process group, SIGKILL it after `grace` seconds; return the exit code.

        The group gets SIGKILL in any case before the leader is reaped, so helpers the process
        started in its group do not outlive it.
        """
        if self.popen.returncode is not None:
            return self.popen.returncode
        self._signal_group(signal.SIGTERM)
        self._exited_unreaped(grace)
        self._signal_group(signal.SIGKILL)
        try:
            return self.popen.wait(KILL_WAIT)
        except subprocess.TimeoutExpired:
            return None


# After a timeout, how long to wait for the killed group's output pipes to close.
DRAIN_WAIT = 5.0  # seconds


def run_bounded(
    argv: Sequence[str],
    *,
    timeout: float,
    check: bool = True,
    input: str | None = None,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Like subprocess.run(capture_output=True, text=True), but truly bounded by `timeout`.

    subprocess.run kills only its direct child on timeout and then waits, without a bound, for
    the output pipes to close; a grandchild holding them (a shell's background job) would hang
    it. Here the command leads its own process group, the whole group gets SIGKILL on timeout,
    and draining the pipes afterwards is bounded too. Raises subprocess.TimeoutExpired or, with
    `check`, subprocess.CalledProcessError.
    """
    full_env = None if env is None else {**os.environ, **env}
    argv = list(argv)
    with subprocess.Popen(
        argv,
        stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=full_env,
        start_new_session=True,
    ) as p:
        try:
            out, err = p.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            # The leader is not reaped yet, so its group id cannot have been reused.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, signal.SIGKILL)
            try:
                out, err = p.communicate(timeout=DRAIN_WAIT)
            except subprocess.TimeoutExpired:
                out, err = "", ""  # A process outside the group still holds the pipes.
            raise subprocess.TimeoutExpired(argv, timeout, out, err) from None
        rc = p.poll()
    assert rc is not None
    if check and rc != 0:
        raise subprocess.CalledProcessError(rc, argv, out, err)
    return subprocess.CompletedProcess(argv, rc, out, err)
