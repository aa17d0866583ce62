"""meshscale-wireguard with real TUN interfaces, in lab namespaces: the wireguard-go contract.

- the parent exits 0 once the interface and /var/run/wireguard/IFNAME.sock exist;
- wg(8) configures and reads it; ``ip link del IFNAME`` stops it and removes the socket;
- wg-quick drives it through WG_QUICK_USERSPACE_IMPLEMENTATION (no kernel module here).
"""

from __future__ import annotations

import base64
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from meshscale.key import clamp
from meshscale.lab import Host, Lab
from meshscale.wgdev.uapi_server import socket_path

from .conftest import unique_ifname

pytestmark = [pytest.mark.lab, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
DAEMON = str(Path(sys.executable).with_name("meshscale-wireguard"))
TUN_FAKE = [sys.executable, "-m", "tests.wgdev.launcher", "tun", "/var/run/wireguard"]
TIMEOUT = 10.0  # seconds


@pytest.fixture
def host(lab: Lab) -> Host:
    return lab.add_public_host("a")


@pytest.fixture
def ifname() -> Iterator[str]:
    name = unique_ifname()
    yield name
    Path(socket_path(name)).unlink(missing_ok=True)  # only if a test left it behind


def wait_for(condition: Callable[[], bool], timeout: float = TIMEOUT) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def link_exists(host: Host, ifname: str) -> bool:
    return host.run(["ip", "link", "show", ifname], check=False).returncode == 0


@pytest.mark.parametrize(
    "command",
    [
        pytest.param([DAEMON], id="engine"),
        # A TUN and no data plane: checks our side alone, whatever the engine does.
        pytest.param(TUN_FAKE, id="tunfake"),
    ],
)  # fmt: skip
def test_daemon_lifecycle_with_real_interface(host: Host, ifname: str, command: list[str]) -> None:
    env = {"PYTHONPATH": os.pathsep.join([str(ROOT), *sys.path])}
    started = host.run([*command, ifname], env=env, timeout=TIMEOUT)
    assert started.returncode == 0, started.stderr
    path = socket_path(ifname)
    assert os.path.exists(path)  # both exist as soon as the parent returned
    assert link_exists(host, ifname)
    key = base64.b64encode(bytes(range(1, 33))).decode()  # not clamped
    peer = base64.b64encode(bytes([7] * 32)).decode()
    host.run(["sh", "-c", f"echo {key} > /dev/shm/{ifname}.key"])
    try:
        host.run(
            ["wg", "set", ifname, "private-key", f"/dev/shm/{ifname}.key", "listen-port", "51777",
             "peer", peer, "allowed-ips", "10.88.0.2/32", "endpoint", "203.0.113.99:51777"]
        )  # fmt: skip
    finally:
        os.unlink(f"/dev/shm/{ifname}.key")
    dump = host.run(["wg", "show", ifname, "dump"]).stdout.splitlines()
    assert dump[0].split("\t")[0] == base64.b64encode(clamp(bytes(range(1, 33)))).decode()
    assert dump[0].split("\t")[2] == "51777"
    assert dump[1].split("\t")[:4] == [peer, "(none)", "203.0.113.99:51777", "10.88.0.2/32"]
    host.run(["ip", "link", "del", ifname])
    assert wait_for(lambda: not os.path.exists(path)), "daemon did not notice the deleted link"


@pytest.mark.interop
def test_wg_quick_up_and_down(host: Host, ifname: str, tmp_path: Path) -> None:
    if shutil.which("wg-quick") is None:
        pytest.skip("needs wg-quick")
    if Path("/sys/module/wireguard").exists():
        pytest.skip("the kernel module would be used instead of the userspace daemon")
    conf = tmp_path / f"{ifname}.conf"
    conf.write_text(
        "[Interface]\n"
        f"PrivateKey = {base64.b64encode(bytes(range(1, 33))).decode()}\n"
        "ListenPort = 51778\nAddress = 10.89.0.1/24\n\n"
        f"[Peer]\nPublicKey = {base64.b64encode(bytes([9] * 32)).decode()}\n"
        "AllowedIPs = 10.89.0.2/32\nEndpoint = 203.0.113.98:51778\n"
    )
    conf.chmod(0o600)
    env = {"WG_QUICK_USERSPACE_IMPLEMENTATION": DAEMON}
    up = host.run(["wg-quick", "up", str(conf)], env=env, timeout=30)
    assert "meshscale-wireguard" in up.stderr  # wg-quick used us, not a kernel module
    assert "10.89.0.1/24" in host.run(["ip", "-4", "addr", "show", ifname]).stdout
    assert "listening port: 51778" in host.run(["wg", "show", ifname]).stdout
    host.run(["wg-quick", "down", str(conf)], env=env, timeout=30)
    assert not link_exists(host, ifname)
    assert wait_for(lambda: not os.path.exists(socket_path(ifname)))


OPEN_TUN_THEN_EXEC = """
import fcntl, os, struct, sys
name, argv = sys.argv[1], sys.argv[2:]
fd = os.open("/dev/net/tun", os.O_RDWR)
fcntl.ioctl(fd, 0x400454CA, struct.pack("16sH22x", name.encode(), 0x0001 | 0x1000))
os.set_inheritable(fd, True)
os.environ["WG_TUN_FD"] = str(fd)
os.execv(argv[0], argv)
"""


@pytest.mark.parametrize(
    "command", [pytest.param([DAEMON], id="engine"), pytest.param(TUN_FAKE, id="tunfake")]
)
def test_inherited_tun_fd_names_the_socket(host: Host, ifname: str, command: list[str]) -> None:
    # Like wireguard-go, the daemon asks the TUN fd for its real name and ignores IFNAME.
    env = {"PYTHONPATH": os.pathsep.join([str(ROOT), *sys.path])}
    argv = [sys.executable, "-c", OPEN_TUN_THEN_EXEC, ifname, *command, "ignored0"]
    started = host.run(argv, env=env, timeout=TIMEOUT)
    assert started.returncode == 0, started.stderr
    path = socket_path(ifname)
    assert os.path.exists(path)
    assert not os.path.exists(socket_path("ignored0"))
    assert host.run(["wg", "show", ifname, "listen-port"]).stdout.strip().isdigit()
    host.run(["ip", "link", "del", ifname])
    assert wait_for(lambda: not os.path.exists(path)), "daemon did not notice the deleted link"
