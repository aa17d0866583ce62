"""meshscale-wireguard as a process: arguments, daemonising, environment, stop conditions.

The processes run ``tests.wgdev.launcher`` (main() with a FakeEngine) in a temporary socket
directory. Every process is killed by PID at the end of its test.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from meshscale import __version__
from meshscale.wgdev.main import interface_name_problem, main
from meshscale.wgdev.uapi_server import open_uapi_listener, query_device, socket_path

from .fakes import FakeEngine

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 10.0  # seconds; bound on every wait for a process


def launcher(kind: str, sock_dir: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "tests.wgdev.launcher", kind, str(sock_dir), *args]


def child_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("WG_PROCESS_FOREGROUND", "WG_TUN_FD", "WG_UAPI_FD", "LOG_LEVEL")
        and not k.startswith("FAKE_ENGINE_")
    }
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *sys.path])
    env.update(extra)
    return env


def wait_for(condition: Callable[[], bool], timeout: float = TIMEOUT) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def server_pid(path: str) -> int:
    """The PID that listens on a UNIX socket (SO_PEERCRED: pid, uid, gid)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(path)
        creds = s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid: int = struct.unpack("3i", creds)[0]
    return pid


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(OSError):  # a zombie counts as gone
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    return False


@pytest.fixture
def pids() -> Iterator[list[int]]:
    """PIDs to SIGKILL at teardown if they still live."""
    owned: list[int] = []
    yield owned
    for pid in owned:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def foreground(sock_dir: Path, pids: list[int]) -> Iterator[Callable[..., subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []

    def start(ifname: str, *args: str, **env: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            launcher("fake", sock_dir, *args, ifname),
            env=child_env(**env),
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        procs.append(proc)
        pids.append(proc.pid)
        path = socket_path(ifname, str(sock_dir))
        assert wait_for(lambda: os.path.exists(path) or proc.poll() is not None)
        return proc

    yield start
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.communicate(timeout=TIMEOUT)


# ---- arguments (in-process) --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "required: IFNAME"),
        (["-x", "wg0"], "unrecognized arguments: -x"),
        (["wg0", "wg1"], "unrecognized arguments: wg1"),
        (["a" * 16], "longer than 15 bytes"),
        (["wg/0"], "contains '/'"),
        (["wg 0"], "whitespace"),
        (["-f", ".."], "reserved"),
    ],
)
def test_usage_errors_are_one_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("meshscale-wireguard: ")
    assert message in err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"meshscale-wireguard v{__version__}\n"


def test_bad_fd_environment(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("WG_TUN_FD", "three")
    assert main(["-f", "wg0"]) == 1
    assert "WG_TUN_FD is not a file descriptor number" in capsys.readouterr().err


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """main() configures the root logger as a program does; undo that after in-process calls."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.usefixtures("restore_logging")
def test_engine_failure_in_foreground(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], sock_dir: Path
) -> None:
    monkeypatch.setenv("FAKE_ENGINE_FAIL", "1")
    assert main(["-f", "wgt9"], engine_factory=FakeEngine.create, socket_dir=str(sock_dir)) == 1
    assert "ERROR: (wgt9) " in capsys.readouterr().err
    assert not os.path.exists(socket_path("wgt9", str(sock_dir)))


def test_interface_name_rules() -> None:
    assert interface_name_problem("wg0") is None
    assert interface_name_problem("a" * 15) is None
    assert interface_name_problem("") == "empty"
    assert interface_name_problem("wg%d") is not None


# ---- processes ---------------------------------------------------------------------------------

slow = pytest.mark.slow


@slow
def test_foreground_serves_until_sigterm(
    foreground: Callable[..., subprocess.Popen[str]], sock_dir: Path
) -> None:
    proc = foreground("wgm0", "-f")
    path = socket_path("wgm0", str(sock_dir))
    assert server_pid(path) == proc.pid
    assert query_device(path).peers == []
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(TIMEOUT) == 0
    assert not os.path.exists(path)


@slow
def test_sigint_and_process_foreground_env(
    foreground: Callable[..., subprocess.Popen[str]], sock_dir: Path
) -> None:
    proc = foreground("wgm1", WG_PROCESS_FOREGROUND="1")  # no -f: the env var alone
    path = socket_path("wgm1", str(sock_dir))
    assert server_pid(path) == proc.pid
    proc.send_signal(signal.SIGINT)
    assert proc.wait(TIMEOUT) == 0
    assert not os.path.exists(path)


@slow
def test_daemon_parent_exits_once_socket_exists(sock_dir: Path, pids: list[int]) -> None:
    result = subprocess.run(
        launcher("fake", sock_dir, "wgm2"),
        env=child_env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    path = socket_path("wgm2", str(sock_dir))
    assert os.path.exists(path)  # already there when the parent returned
    daemon = server_pid(path)
    pids.append(daemon)
    assert os.getsid(daemon) == daemon  # a session of its own
    assert query_device(path).listen_port == 0
    os.kill(daemon, signal.SIGTERM)
    assert wait_for(lambda: not alive(daemon))
    assert not os.path.exists(path)


@slow
def test_daemon_failure_reported_by_parent(sock_dir: Path) -> None:
    result = subprocess.run(
        launcher("fake", sock_dir, "wgm3"),
        env=child_env(FAKE_ENGINE_FAIL="1"),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert result.returncode == 1
    assert "Failed to create TUN device: [Errno 19] fake engine told to fail" in result.stderr
    assert not os.path.exists(socket_path("wgm3", str(sock_dir)))


@slow
@pytest.mark.parametrize("mode", [["-f"], []])
def test_socket_in_use(sock_dir: Path, mode: list[str]) -> None:
    live = open_uapi_listener("wgm4", str(sock_dir))
    try:
        result = subprocess.run(
            launcher("fake", sock_dir, *mode, "wgm4"),
            env=child_env(),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
        assert result.returncode == 1
        assert "UAPI listen error" in result.stderr
        assert "unix socket in use" in result.stderr
        assert os.path.exists(socket_path("wgm4", str(sock_dir)))  # not touched
    finally:
        live.close()


@slow
def test_stops_when_engine_closes(
    foreground: Callable[..., subprocess.Popen[str]], sock_dir: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "interface-gone"
    proc = foreground("wgm5", "-f", FAKE_ENGINE_CLOSE_FILE=str(marker))
    assert proc.poll() is None
    marker.touch()
    assert proc.wait(TIMEOUT) == 0
    assert not os.path.exists(socket_path("wgm5", str(sock_dir)))


@slow
def test_stops_when_socket_file_removed(
    foreground: Callable[..., subprocess.Popen[str]], sock_dir: Path
) -> None:
    proc = foreground("wgm6", "-f")
    os.unlink(socket_path("wgm6", str(sock_dir)))
    assert proc.wait(TIMEOUT) == 0


@slow
def test_inherited_uapi_fd(sock_dir: Path, pids: list[int]) -> None:
    listener = open_uapi_listener("wgm7", str(sock_dir))
    path = socket_path("wgm7", str(sock_dir))
    try:
        proc = subprocess.Popen(
            launcher("fake", sock_dir, "-f", "wgm7"),
            env=child_env(WG_UAPI_FD=str(listener.fileno())),
            pass_fds=[listener.fileno()],
            cwd=ROOT,
        )
        pids.append(proc.pid)
    finally:
        listener.close()  # the child holds its own copy
    assert query_device(path, timeout=TIMEOUT).fwmark == 0  # served by the child
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(TIMEOUT) == 0
    assert not os.path.exists(path)  # unlinked on close, as wireguard-go's listener does


@slow
def test_log_level_verbose_and_silent(
    foreground: Callable[..., subprocess.Popen[str]], sock_dir: Path
) -> None:
    proc = foreground("wgm8", "-f", LOG_LEVEL="verbose")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=TIMEOUT)
    assert "DEBUG: (wgm8) " in err
    assert "Device started" in err
    proc = foreground("wgm9", "-f", LOG_LEVEL="silent")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:  # provoke an error log line
        s.connect(socket_path("wgm9", str(sock_dir)))
        s.sendall(b"bogus\n")
        assert s.recv(100) == b"errno=-71\n\n"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=TIMEOUT)
    assert err == ""


@slow
def test_restart_after_crash_replaces_stale_socket(
    foreground: Callable[..., subprocess.Popen[str]], sock_dir: Path
) -> None:
    path = socket_path("wgma", str(sock_dir))
    crashed = foreground("wgma", "-f")
    crashed.kill()  # SIGKILL: no clean-up, the socket file stays behind
    crashed.wait(TIMEOUT)
    assert os.path.exists(path)
    restarted = foreground("wgma", "-f")  # returns at once: the stale file already exists

    def serving() -> bool:
        try:
            return server_pid(path) == restarted.pid
        except OSError:  # refused (stale file) or missing (unlinked, not bound yet)
            return False

    assert wait_for(serving)
    restarted.send_signal(signal.SIGTERM)
    assert restarted.wait(TIMEOUT) == 0


@slow
def test_signal_during_startup_still_cleans_up(sock_dir: Path) -> None:
    result = subprocess.run(
        launcher("fake", sock_dir, "-f", "wgmb"),
        env=child_env(FAKE_ENGINE_SIGNAL_ON_START="1", LOG_LEVEL="verbose"),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert result.returncode == 0, result.stderr
    assert "Stopped: signal" in result.stderr
    assert not os.path.exists(socket_path("wgmb", str(sock_dir)))


@slow
def test_main_imports_without_the_engine() -> None:
    code = (
        "import sys, meshscale.wgdev.main\n"
        "assert 'meshscale.wgengine.engine' not in sys.modules, 'engine imported eagerly'\n"
    )
    subprocess.run([sys.executable, "-c", code], env=child_env(), check=True, timeout=TIMEOUT)


@slow
def test_daemon_keeps_stderr_when_log_level_set(
    sock_dir: Path, pids: list[int], tmp_path: Path
) -> None:
    log_file = tmp_path / "daemon.log"
    with log_file.open("w") as out:
        result = subprocess.run(
            launcher("fake", sock_dir, "wgmc"),
            env=child_env(LOG_LEVEL="error"),
            cwd=ROOT,
            stdout=out,
            stderr=out,
            timeout=TIMEOUT,
        )
    assert result.returncode == 0
    path = socket_path("wgmc", str(sock_dir))
    daemon = server_pid(path)
    pids.append(daemon)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:  # the daemon logs an error
        s.connect(path)
        s.sendall(b"bogus\n")
        assert s.recv(100) == b"errno=-71\n\n"
    assert wait_for(lambda: "ERROR: (wgmc) " in log_file.read_text())
    os.kill(daemon, signal.SIGTERM)
    assert wait_for(lambda: not os.path.exists(path))
