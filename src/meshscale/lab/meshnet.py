"""Nodes of a meshscale tailnet in the network lab: our control server and meshscaled nodes.

    with Lab(hint="demo") as lab:
        net = MeshNet(lab, workdir)
        net.start_control()                      # ctl host: https://ctl.lab, DERP + STUN
        a = net.add_node("a", lab.add_public_host("a"))
        a.up()                                   # meshscale up --login-server --authkey
        a.cli("status", "--json")

The control server is the real `meshscale-control serve` (:class:`ControlServer`) with a lab
CA certificate; user "lab" (lab@meshscale.lab), MagicDNS domain ms.lab. Every process runs in
its lab namespace and is stopped with the lab.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from meshscale.lab.control import ControlServer
from meshscale.lab.lab import Host, Lab
from meshscale.lab.pki import LabCA
from meshscale.lab.proc import Proc

CONTROL_NAME = "ctl.lab"
LAB_USER = "lab"
LAB_EMAIL = "lab@meshscale.lab"
BASE_DOMAIN = "ms.lab"


class MeshLabError(RuntimeError):
    pass


class MeshNode:
    def __init__(self, net: MeshNet, name: str, host: Host, args: Sequence[str] = ()) -> None:
        self.net = net
        self.args = tuple(args)  # extra meshscaled flags
        self.name = name
        self.host = host
        self.dir = net.workdir / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.socket = str(self.dir / "meshscaled.sock")
        self.proc: Proc | None = None

    def start(self, port: int = 41641, wait: bool = True) -> None:
        argv = [
            sys.executable,
            "-m",
            "meshscale.node.main",
            "--statedir",
            str(self.dir),
            "--socket",
            self.socket,
            "--tun",
            "ms0",
            "--port",
            str(port),
            "--verbose",
            "1",
            *self.args,
        ]
        env = {"SSL_CERT_FILE": str(self.net.ca.cert_path)}
        self.proc = self.host.spawn(argv, env=env, log_name=f"meshscaled-{self.name}")
        if wait:
            self.wait_started()

    def wait_started(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + 15
        while not Path(self.socket).exists():
            if not self.proc.running or time.monotonic() > deadline:
                raise MeshLabError(f"meshscaled {self.name} did not start:\n{self.log()[-3000:]}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()
            self.proc = None

    def log(self) -> str:
        return self.proc.log_text() if self.proc is not None else ""

    def cli(
        self, *args: str, timeout: float = 30.0, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "meshscale.cli.main", "--socket", self.socket, *args]
        res = self.host.run(argv, timeout=timeout, check=False)
        if check and res.returncode != 0:
            raise MeshLabError(f"{self.name}: meshscale {' '.join(args)}: {res.stderr.strip()}")
        return res

    def up(self, timeout: float = 30.0) -> None:
        self.cli(
            "up",
            f"--login-server={self.net.control_url}",
            f"--authkey={self.net.authkey}",
            f"--hostname={self.name}",
            f"--timeout={timeout:g}s",
            timeout=timeout + 10,
        )

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = json.loads(self.cli("status", "--json").stdout)
        return out

    def ip4(self) -> str:
        return str(self.status()["TailscaleIPs"][0])

    def peer(self, name: str) -> dict[str, Any]:
        for p in (self.status().get("Peer") or {}).values():
            if p.get("HostName") == name:
                return dict(p)
        raise MeshLabError(f"{self.name} has no peer {name}")


def wait_direct(get_peer: Callable[[], dict[str, Any]], deadline: float) -> dict[str, Any]:
    """Poll a peer's status entry until it shows a direct path (CurAddr) or `deadline` passes.

    Returns the last entry seen either way, so the caller's assertion can show it.
    """
    peer: dict[str, Any] = {}
    while time.monotonic() < deadline:
        peer = get_peer()
        if peer.get("CurAddr"):
            break
        time.sleep(0.5)
    return peer


class MeshNet:
    def __init__(
        self, lab: Lab, workdir: Path, control_config: Mapping[str, Any] | None = None
    ) -> None:
        self.lab = lab
        self.control_config = control_config
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.ca = LabCA(self.workdir / "ca")
        self.control: ControlServer | None = None
        self.authkey = ""
        self.control_url = f"https://{CONTROL_NAME}"
        self.nodes: dict[str, MeshNode] = {}

    @property
    def ctl(self) -> Host | None:
        return self.control.host if self.control is not None else None

    @property
    def ctl_proc(self) -> Proc | None:
        return self.control.proc if self.control is not None else None

    def start_control(self) -> None:
        """Start the control server on host "ctl" (again after stop_control: same state,
        same keys) and make a reusable pre-auth key the first time."""
        if self.control is None:
            host = self.lab.add_public_host("ctl")
            self.control = ControlServer(
                host, self.ca, name=CONTROL_NAME, base_domain=BASE_DOMAIN,
                config=self.control_config, start=False,
            )  # fmt: skip
        try:
            self.control.start()
            if not self.authkey:
                self.control.create_user(LAB_USER, email=LAB_EMAIL)
                self.authkey = self.control.authkey(LAB_USER)
        except Exception as exc:
            raise MeshLabError(f"control did not start: {exc}") from exc

    def approve(self, auth_url: str) -> None:
        """Approve an interactive login by its AuthURL (as an admin would)."""
        assert self.control is not None
        self.control.register(auth_url.rstrip("/").rsplit("/", 1)[-1], LAB_USER)

    def stop_control(self) -> None:
        if self.control is not None:
            self.control.stop()

    def add_node(
        self, name: str, host: Host, *, wait: bool = True, args: Sequence[str] = ()
    ) -> MeshNode:
        node = MeshNode(self, name, host, args)
        self.nodes[name] = node
        node.start(wait=wait)
        return node

    def up_all(self, nodes: list[MeshNode]) -> None:
        """Wait for the daemons, then ``meshscale up`` on all of them at once."""
        for n in nodes:
            n.wait_started()
        errors: list[BaseException] = []

        def up(n: MeshNode) -> None:
            try:
                n.up()
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=up, args=(n,)) for n in nodes]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
