"""Our control server (the real `meshscale-control serve` program) on a lab host.

    ca = LabCA(lab.workdir / "pki")
    ctl = ControlServer(lab.add_public_host("ctl"), ca)     # https://ctl.lab, DERP + STUN embedded
    key = ctl.authkey()                                     # a reusable pre-auth key for user "lab"
    TailscaleNode(host, "n1", ca_cert=ca.cert_path).up(ctl.url, key, hostname="n1")
    ctl.register(reg_id)                                    # approve an interactive login

The server gets a certificate from the lab CA for its name and addresses, a hosts entry in every
lab namespace, HTTPS on 443, the embedded DERP region 900 on the same port and STUN on 3478.
`config` is merged into the generated config.yaml, for variants the tests need (metrics on a
debug port, no embedded DERP but a region file, ...). Admin commands run the same program's CLI
over its unix socket. This is the lab's only control server: the demo (`python -m
meshscale.lab`), MeshNet and the acceptance tests with official clients all use it.
"""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from typing import Any

import yaml

from meshscale.lab.lab import Host
from meshscale.lab.netns import LabError
from meshscale.lab.pki import LabCA
from meshscale.lab.proc import Proc

START_TIMEOUT = 30.0  # seconds for /health to answer
DERP_REGION_ID = 900
MAX_SOCKET_PATH = 100  # sun_path is 108 bytes


def control_argv() -> list[str]:
    """The `meshscale-control` console script next to this interpreter, else `python -c`."""
    script = Path(sys.executable).parent / "meshscale-control"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from meshscale.control.main import main; "
            "sys.exit(main())"]  # fmt: skip


def merge_config(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """`base` with `extra` merged in, mappings key by key (for ControlServer(config=...))."""
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = merge_config(out[k], v)
        else:
            out[k] = v
    return out


def lab_config(
    name: str,
    ipv4: IPv4Address,
    ipv6: IPv6Address | None,
    cert: Path,
    key: Path,
    socket: Path,
    *,
    base_domain: str = "ts.lab",
) -> dict[str, Any]:
    """The config.yaml (Headscale's keys) of a lab control server at https://`name`."""
    derp_server: dict[str, Any] = {
        "enabled": True,
        "region_id": DERP_REGION_ID,
        "region_code": "lab",
        "region_name": "lab DERP",
        # Every address family: the region names both of the host's addresses, and an
        # unanswered IPv6 probe would hold each netcheck report to its deadline.
        "stun_listen_addr": ":3478",
        "ipv4": str(ipv4),
        "automatically_add_embedded_derp_region": True,
    }
    if ipv6 is not None:
        derp_server["ipv6"] = str(ipv6)
    return {
        "server_url": f"https://{name}",
        "listen_addr": ":443",  # IPv4 and IPv6, as the DERP region advertises both
        "tls_cert_path": str(cert),
        "tls_key_path": str(key),
        "unix_socket": str(socket),
        "derp": {"server": derp_server, "urls": []},
        "dns": {"base_domain": base_domain, "magic_dns": True},
    }


class ControlServer:
    """`meshscale-control serve` in `host`'s namespace, reachable at https://<name>."""

    def __init__(
        self,
        host: Host,
        ca: LabCA,
        *,
        name: str = "ctl.lab",
        base_domain: str = "ts.lab",
        config: Mapping[str, Any] | None = None,
        start: bool = True,
    ) -> None:
        self.host = host
        self.ca = ca
        self.name = name
        self.url = f"https://{name}"
        self.dir = host.lab.workdir / f"control-{host.name}"
        self.dir.mkdir(parents=True, exist_ok=True)
        ips = [ip for ip in (host.ip, host.ip6) if ip is not None]
        self.cert_path, self.key_path = ca.issue([name], ips)
        host.lab.add_hosts_entry(name, host.ip)
        sock = self.dir / "control.sock"
        if len(str(sock)) > MAX_SOCKET_PATH:
            short = Path("/tmp") / f"{host.lab.name}-ctl-{host.name}"
            short.mkdir(parents=True, exist_ok=True)
            host.lab.on_close(functools.partial(shutil.rmtree, short, ignore_errors=True))
            sock = short / "control.sock"
        self.socket = sock
        cfg = lab_config(
            name, host.ip, host.ip6, self.cert_path, self.key_path, self.socket,
            base_domain=base_domain,
        )  # fmt: skip
        if config:
            cfg = merge_config(cfg, config)
        self.config_path = self.dir / "config.yaml"
        self.config_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        self.proc: Proc | None = None
        if start:
            self.start()

    def __repr__(self) -> str:
        return f"<ControlServer {self.url} on {self.host.name}>"

    def _base_argv(self) -> list[str]:
        return [*control_argv(), "-c", str(self.config_path), "--state-dir", str(self.dir)]

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start the server and wait until https://<name>/health answers through TLS."""
        if self.proc is not None and self.proc.running:
            return
        argv = [*self._base_argv(), "serve"]
        self.proc = self.host.spawn(argv, log_name=f"control-{self.host.name}")
        deadline = time.monotonic() + timeout
        while True:
            if not self.proc.running:
                raise LabError(f"meshscale-control exited:\n{self.proc.log_text()[-3000:]}")
            res = self.host.run(
                ["curl", "-sf", "--max-time", "2", "--cacert", str(self.ca.cert_path),
                 f"{self.url}/health"],
                check=False, timeout=10.0,
            )  # fmt: skip
            if res.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise LabError(f"meshscale-control did not answer:\n{self.log_text()[-3000:]}")
            time.sleep(0.1)

    def admin(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run `meshscale-control ARGS` (the admin CLI, over the unix socket); with `check`,
        a failure raises LabError carrying the CLI's error line."""
        res = self.host.run([*self._base_argv(), *args], timeout=30.0, check=False)
        if check and res.returncode != 0:
            raise LabError(f"meshscale-control {' '.join(args)}: {res.stderr.strip()[-2000:]}")
        return res

    def admin_json(self, *args: str) -> Any:
        return json.loads(self.admin("-o", "json", *args).stdout)

    def create_user(self, user: str, *, email: str = "") -> None:
        """Create `user` unless it exists."""
        users = self.admin_json("users", "list")
        rows = users if isinstance(users, list) else users.get("users", [])
        if not any(u.get("name") == user for u in rows):
            self.admin("users", "create", user, *(["--email", email] if email else []))

    def register(self, reg_id: str, user: str = "lab") -> None:
        """Approve the interactive login `reg_id` (the last part of its AuthURL) for `user`,
        as an admin does with `meshscale-control nodes register`."""
        self.admin("nodes", "register", "--user", user, "--key", reg_id)

    def authkey(
        self, user: str = "lab", *, reusable: bool = True, ephemeral: bool = False,
        expiration: str = "1h", tags: tuple[str, ...] = (),
    ) -> str:  # fmt: skip
        """A new pre-auth key for `user` (created if needed)."""
        self.create_user(user)
        args = ["preauthkeys", "create", "--user", user, "--expiration", expiration]
        if reusable:
            args.append("--reusable")
        if ephemeral:
            args.append("--ephemeral")
        for tag in tags:
            args += ["--tags", tag]
        out = self.admin_json(*args)
        key = out["preAuthKey"]["key"] if "preAuthKey" in out else out["key"]
        return str(key)

    def nodes(self) -> list[dict[str, Any]]:
        """The admin CLI's `nodes list`, as JSON rows."""
        out = self.admin_json("nodes", "list")
        rows = out if isinstance(out, list) else out.get("nodes", [])
        return list(rows)

    def log_text(self) -> str:
        return self.proc.log_text() if self.proc is not None else ""

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.running

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        return self.proc.stop()
