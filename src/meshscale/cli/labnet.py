"""Nodes of a meshscale tailnet in the network lab: our control server and meshscaled nodes.

    with Lab(hint="demo") as lab:
        net = MeshNet(lab, workdir)
        net.start_control()                      # ctl host: ts2021 + DERP + STUN
        a = net.add_node("a", lab.add_public_host("a"))
        a.up()                                   # meshscale up --login-server --authkey
        a.cli("status", "--json")

Every process runs in its lab namespace and is stopped with the lab.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from meshscale.lab import Host, Lab, LabCA, Proc

CONTROL_START_TIMEOUT = 30.0  # seconds


class MeshLabError(RuntimeError):
    pass


class MeshNode:
    def __init__(self, net: MeshNet, name: str, host: Host) -> None:
        self.net = net
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
        ]
        env = {"SSL_CERT_FILE": str(self.net.ca.cert_path)} if self.net.ca is not None else None
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

    def up(self, timeout: float = 30.0, *, https: bool = False) -> None:
        url = "https://ctl.lab" if https else self.net.control_url
        self.cli(
            "up",
            f"--login-server={url}",
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


class MeshNet:
    def __init__(self, lab: Lab, workdir: Path) -> None:
        self.lab = lab
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.ctl: Host | None = None
        self.ctl_proc: Proc | None = None
        self.authkey = ""
        self.control_url = ""
        self.ca: LabCA | None = None
        self.nodes: dict[str, MeshNode] = {}

    def start_control(self) -> None:
        if self.ctl is None:
            self.ctl = self.lab.add_public_host("ctl")
            self.lab.add_hosts_entry("ctl.lab", self.ctl.ip)
            self.ca = LabCA(self.workdir / "ca")
        assert self.ca is not None
        cert, key = self.ca.issue(["ctl.lab"], [self.ctl.ip])
        cdir = self.workdir / "ctl"
        cdir.mkdir(exist_ok=True)
        (cdir / "authkey").unlink(missing_ok=True)
        argv = [sys.executable, "-m", "meshscale.cli.labcontrol", str(cdir), "ctl.lab",
                str(self.ctl.ip), str(cert), str(key)]  # fmt: skip
        self.ctl_proc = self.ctl.spawn(argv, log_name="control")
        deadline = time.monotonic() + CONTROL_START_TIMEOUT
        while not (cdir / "authkey").exists():
            if not self.ctl_proc.running or time.monotonic() > deadline:
                raise MeshLabError("control did not start:\n" + self.ctl_proc.log_text()[-3000:])
            time.sleep(0.05)
        self.authkey = (cdir / "authkey").read_text().strip()
        self.control_url = f"http://{self.ctl.ip}"

    def approve(self, auth_url: str) -> None:
        """Approve an interactive login by its AuthURL (as an admin would)."""
        reg_id = auth_url.rstrip("/").rsplit("/", 1)[-1]
        (self.workdir / "ctl" / "approve" / reg_id).touch()

    def stop_control(self) -> None:
        if self.ctl_proc is not None:
            self.ctl_proc.stop()
            self.ctl_proc = None

    def add_node(self, name: str, host: Host, *, wait: bool = True) -> MeshNode:
        node = MeshNode(self, name, host)
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
