"""The official tailscaled and tailscale CLI, run inside a lab namespace.

    node = TailscaleNode(host, "n1", ca_cert=ca.cert_path)  # starts tailscaled, waits
    node.up(login_server="https://ctl.lab", authkey=key, hostname="n1")
    node.ip4(); node.ping("100.64.0.2"); node.status_json()
    node.stop()

Everything the daemon writes stays in <lab workdir>/<name>/: state, logs (TS_LOGS_DIR) and HOME.
`up` passes --accept-dns=false by default: with DNS accepted, tailscaled would manage
/etc/resolv.conf, and only resolv.conf itself is per-namespace (a backup file would land in the
machine's /etc).
"""

from __future__ import annotations

import functools
import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from meshscale.lab.clients import client_path, clients_dir
from meshscale.lab.lab import Host
from meshscale.lab.netns import LabError
from meshscale.lab.proc import Proc

if TYPE_CHECKING:
    from meshscale.lab.control import ControlServer
    from meshscale.lab.pki import LabCA

__all__ = ["TailscaleNode", "clients_dir", "join_tailscaled"]

DEFAULT_PORT = 41641
START_TIMEOUT = 20.0  # seconds for tailscaled to answer on its socket
# Unix socket paths are limited to 108 bytes (sun_path); longer ones go to a short directory.
MAX_SOCKET_PATH = 100
# tailscaled 1.96.4 moves Starting -> Running only when it processes an engine status with
# LiveDERPs > 0 (the number of DERP connections it has added, connected or not), and it asks
# for one only on a few events: a new DERP connection, an endpoint change, WireGuard activity,
# entering Starting. Rarely (1 `up` in several hundred under load), the node stays in Starting
# with its home DERP connected and never asks again: most likely a status read just before the
# connection was added gets the later timestamp, is processed first, and the fresh ones are then
# dropped as older (ipnlocal.setWgengineStatus). A watcher with NotifyWatchEngineUpdates (what
# the desktop apps attach) makes tailscaled poll its engine every 2 s, which ends that state.
STUCK_STARTING = 10.0  # seconds in Starting before wait_backend_state polls the engine
ENGINE_POLL = 5.0  # seconds of engine polling (two of tailscaled's 2 s ticks)
_tun_counter = 0


def _tun_name(name: str) -> str:
    global _tun_counter
    _tun_counter += 1
    return f"ts{_tun_counter}{re.sub(r'[^a-z0-9]', '', name.lower())}"[:15]


class TailscaleNode:
    """One tailscaled (official client) in `host`'s namespace, driven through its CLI."""

    def __init__(
        self,
        host: Host,
        name: str,
        *,
        ca_cert: Path | str | None = None,
        port: int = DEFAULT_PORT,
        tun: str | None = None,
        env: Mapping[str, str] | None = None,
        extra_args: Sequence[str] = (),
        start: bool = True,
        version: str | None = None,
    ) -> None:
        self.host = host
        self.name = name
        self.dir = host.lab.workdir / name
        self.state_dir = self.dir / "state"
        self.logs_dir = self.dir / "logs"
        self.home = self.dir / "home"
        for d in (self.state_dir, self.logs_dir, self.home):
            d.mkdir(parents=True, exist_ok=True)
        sock = self.dir / "tailscaled.sock"
        if len(str(sock)) > MAX_SOCKET_PATH:
            short = Path("/tmp") / f"{host.lab.name}-{name}"
            short.mkdir(parents=True, exist_ok=True)
            host.lab.on_close(functools.partial(shutil.rmtree, short, ignore_errors=True))
            sock = short / "tailscaled.sock"
        self.socket = sock
        self.tun = tun or _tun_name(name)
        self.port = port
        self.env: dict[str, str] = {
            "TS_NO_LOGS_NO_SUPPORT": "true",
            "TS_LOGS_DIR": str(self.logs_dir),
            "HOME": str(self.home),
        }
        if ca_cert is not None:
            self.env["SSL_CERT_FILE"] = str(ca_cert)
        if env:
            self.env.update(env)
        self.extra_args = list(extra_args)
        self.tailscaled = str(client_path("tailscaled", version))  # version: an older release
        self.tailscale = str(client_path("tailscale", version))
        self.proc: Proc | None = None
        if start:
            self.start()

    def __repr__(self) -> str:
        return f"<TailscaleNode {self.name} on {self.host.name}>"

    def __enter__(self) -> TailscaleNode:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start tailscaled and wait until its local API answers."""
        if self.proc is not None and self.proc.running:
            return
        argv = [
            self.tailscaled,
            f"--tun={self.tun}",
            f"--statedir={self.state_dir}",
            f"--socket={self.socket}",
            f"--port={self.port}",
            "--no-logs-no-support",
            *self.extra_args,
        ]
        self.proc = self.host.spawn(argv, env=self.env, log_name=f"{self.name}-tailscaled")
        deadline = time.monotonic() + timeout
        while True:
            if not self.proc.running:
                raise LabError(f"tailscaled {self.name} exited:\n{self.proc.log_text()[-3000:]}")
            if self.socket.exists():
                res = self.cli("status", "--json", check=False, timeout=5.0)
                if res.stdout.lstrip().startswith("{"):
                    return
            if time.monotonic() > deadline:
                raise LabError(f"tailscaled {self.name} did not start:\n{self.log_text()[-3000:]}")
            time.sleep(0.1)

    def cli(
        self, *args: str, check: bool = True, timeout: float = 30.0
    ) -> subprocess.CompletedProcess[str]:
        """Run `tailscale --socket=... ARGS` in the node's namespace."""
        return self.host.run(
            [self.tailscale, f"--socket={self.socket}", *args],
            timeout=timeout,
            check=check,
            env=self.env,
        )

    def up(
        self,
        login_server: str,
        authkey: str,
        hostname: str | None = None,
        timeout: float = 60.0,
        accept_dns: bool = False,
        extra_args: Sequence[str] = (),
    ) -> subprocess.CompletedProcess[str]:
        """`tailscale up` against `login_server`; raises CalledProcessError on failure."""
        args = [
            "up",
            f"--login-server={login_server}",
            f"--authkey={authkey}",
            f"--accept-dns={'true' if accept_dns else 'false'}",
            f"--timeout={int(timeout)}s",
        ]
        if hostname is not None:
            args.append(f"--hostname={hostname}")
        args += extra_args
        try:
            return self.cli(*args, timeout=timeout + 15.0)
        except subprocess.CalledProcessError as e:
            if self._unstick_starting():
                return subprocess.CompletedProcess(e.cmd, e.returncode, e.stdout, e.stderr)
            # CI output keeps a failure's head and tail: the CLI's own words go at both ends.
            raise LabError(
                f"tailscale up ({self.name}) failed (exit {e.returncode}): {e.stderr.strip()}\n"
                f"--- tailscaled log ---\n{self.log_text()[-4000:]}\n"
                f"--- tailscale up said ---\n{e.stdout}{e.stderr}"
            ) from e

    def status_json(self) -> dict[str, Any]:
        res = self.cli("status", "--json", timeout=10.0)
        status: dict[str, Any] = json.loads(res.stdout)
        return status

    def backend_state(self) -> str:
        return str(self.status_json().get("BackendState", ""))

    def wait_backend_state(self, *states: str, timeout: float = 30.0) -> str:
        """Poll until BackendState is one of `states`; return it. Waiting for Running, a node
        in Starting for STUCK_STARTING seconds gets its engine polled once (see above)."""
        start = time.monotonic()
        deadline = start + timeout
        starting_since: float | None = None
        while True:
            state = self.backend_state()
            if state in states:
                return state
            now = time.monotonic()
            if state != "Starting":
                starting_since = None
            elif starting_since is None:
                starting_since = now
            elif "Running" in states and now - starting_since >= STUCK_STARTING:
                starting_since = float("inf")  # once per wait
                if self._unstick_starting():
                    return "Running"
            if now > deadline:
                raise LabError(f"{self.name}: BackendState {state!r}, wanted {states}")
            time.sleep(0.2)

    def poll_engine(self, seconds: float = ENGINE_POLL) -> str:
        """Watch the IPN bus with engine updates for `seconds`, as the desktop apps do, so that
        tailscaled requests its engine status every 2 s; returns what the bus said."""
        res = self.host.run(
            ["curl", "-sN", "--max-time", f"{seconds:g}", "--unix-socket", str(self.socket),
             "http://local-tailscaled.sock/localapi/v0/watch-ipn-bus?mask=1"],
            check=False, timeout=seconds + 10.0, env=self.env,
        )  # fmt: skip
        return res.stdout

    def _unstick_starting(self) -> bool:
        """If the node is in Starting, poll its engine; True if it is Running then. Says so on
        stderr, so a test's captured output shows that the upstream race was hit."""
        if self.backend_state() != "Starting":
            return False
        self.poll_engine()
        if self.backend_state() != "Running":
            return False
        print(
            f"{self.name}: tailscaled stayed in Starting until its engine status was polled "
            "(tailscaled 1.96.4 race, see meshscale.lab.tailscale)",
            file=sys.stderr,
        )
        return True

    def wait_running(self, timeout: float = 60.0) -> None:
        """Wait until BackendState is Running (logged in, with a netmap)."""
        self.wait_backend_state("Running", timeout=timeout)

    def peers(self) -> list[dict[str, Any]]:
        """The Peer entries of `tailscale status --json` (empty before login)."""
        peers = self.status_json().get("Peer") or {}
        return list(peers.values())

    def peer_ip(self, hostname: str) -> str | None:
        """The first tailnet address of the peer with this HostName, if it is in the netmap."""
        for peer in self.peers():
            if peer.get("HostName") == hostname or str(peer.get("DNSName", "")).startswith(
                hostname + "."
            ):
                ips = peer.get("TailscaleIPs") or []
                return str(ips[0]) if ips else None
        return None

    def wait_peers(self, count: int, timeout: float = 60.0) -> list[dict[str, Any]]:
        """Poll until at least `count` peers are in the netmap; return them."""
        deadline = time.monotonic() + timeout
        while True:
            peers = self.peers()
            if len(peers) >= count:
                return peers
            if time.monotonic() > deadline:
                raise LabError(f"{self.name}: {len(peers)} peers, wanted {count}")
            time.sleep(0.2)

    def down(self) -> subprocess.CompletedProcess[str]:
        return self.cli("down", timeout=20.0)

    def logout(self) -> subprocess.CompletedProcess[str]:
        return self.cli("logout", timeout=30.0, check=False)

    def netcheck(self) -> subprocess.CompletedProcess[str]:
        """`tailscale netcheck --format=json` (needs a DERP map from control); not checked."""
        return self.cli("netcheck", "--format=json", timeout=60.0, check=False)

    def ip4(self) -> str:
        return self.cli("ip", "-4", timeout=10.0).stdout.strip()

    def ip6(self) -> str:
        return self.cli("ip", "-6", timeout=10.0).stdout.strip()

    def ping(
        self, target: str, args: Sequence[str] = (), timeout: float = 30.0
    ) -> subprocess.CompletedProcess[str]:
        """`tailscale ping ARGS TARGET`; not checked, so callers can look at the output."""
        return self.cli("ping", *args, target, check=False, timeout=timeout)

    def log_text(self) -> str:
        return self.proc.log_text() if self.proc is not None else ""

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.running

    def stop(self) -> int | None:
        """Stop tailscaled (SIGTERM, then SIGKILL); it removes its TUN and routes on SIGTERM."""
        if self.proc is None:
            return None
        return self.proc.stop()


def join_tailscaled(
    hosts: Sequence[Host], ca: LabCA, control: ControlServer, authkey: str, timeout: float
) -> list[TailscaleNode]:
    """One tailscaled per host (named after it) logged in to `control` with `authkey`, all
    Running. A failed login carries the tail of the control server's log."""
    nodes = []
    for host in hosts:
        node = TailscaleNode(host, host.name, ca_cert=ca.cert_path)
        nodes.append(node)
        try:
            node.up(control.url, authkey, hostname=host.name, timeout=timeout)
        except Exception as exc:
            raise LabError(f"{exc}\n--- control ---\n{control.log_text()[-4000:]}") from exc
    for node in nodes:
        node.wait_running(timeout=30)
    return nodes
