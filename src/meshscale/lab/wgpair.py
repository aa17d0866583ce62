"""WireGuard tunnels between lab hosts, with either implementation at either end.

Used by the interop tests and the data-plane benchmark. Each end runs a userspace daemon
(`meshscale-wireguard` or Debian's `wireguard-go`) inside its host's namespace and is
configured with the real `wg` tool over the UAPI socket, exactly as a user would.
Interface names must be unique on the machine (the UAPI socket directory is global).
"""

from __future__ import annotations

import os
import secrets
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from meshscale.lab.lab import Host
from meshscale.lab.proc import Proc

UAPI_DIR = Path("/var/run/wireguard")
# Where the lab machine's build-upstream-wireguard-go.sh leaves upstream wireguard-go (TUN TSO,
# UDP GSO/GRO); MESHSCALE_UPSTREAM_WIREGUARD_GO overrides it.
UPSTREAM_WIREGUARD_GO = Path("/tmp/wggo-modern/wireguard-go")
START_TIMEOUT = 15.0  # seconds for a daemon to create its interface and socket


def meshscale_wireguard_argv() -> list[str]:
    """The console script next to this interpreter (the venv), else `python -m`."""
    script = Path(sys.executable).parent / "meshscale-wireguard"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "meshscale.wgdev.main"]


def wg_genkey() -> tuple[str, str]:
    """(private, public) in wg's base64, computed locally (no subprocess)."""
    import base64

    from meshscale.wireguard.crypto import clamp, public_key

    priv = clamp(secrets.token_bytes(32))
    return base64.b64encode(priv).decode(), base64.b64encode(public_key(priv)).decode()


@dataclass
class WGEnd:
    host: Host
    impl: str  # "meshscale" | "wireguard-go" | "wireguard-go-upstream"
    ifname: str
    proc: Proc
    private_key: str
    public_key: str
    tunnel_ip: str  # IPv4 inside the tunnel
    tunnel_ip6: str
    port: int

    def wg(self, *args: str, timeout: float = 10.0) -> str:
        return self.host.run(["wg", *args], timeout=timeout).stdout

    def set_peer(self, peer: WGEnd, endpoint: str | None, extra: list[str] | None = None) -> None:
        argv = [
            "set",
            self.ifname,
            "peer",
            peer.public_key,
            "allowed-ips",
            f"{peer.tunnel_ip}/32,{peer.tunnel_ip6}/128",
        ]
        if endpoint:
            argv += ["endpoint", endpoint]
        self.wg(*argv, *(extra or []))

    def stop(self) -> None:
        self.proc.stop()
        sock = UAPI_DIR / f"{self.ifname}.sock"
        if sock.exists():
            sock.unlink()


def start_end(
    host: Host,
    impl: str,
    index: int,
    *,
    port: int = 51820,
    mtu: int = 1420,
    log_dir: Path | None = None,
) -> WGEnd:
    """Start a daemon in host's namespace, give it a key, a port and tunnel addresses
    10.100.0.<index>/24 and fd00:100::<index>/64."""
    ifname = f"wg{impl[0]}{secrets.token_hex(3)}"
    env = dict(os.environ)
    if impl in ("wireguard-go", "wireguard-go-upstream"):
        binary = "wireguard-go" if impl == "wireguard-go" else str(upstream_wireguard_go())
        argv = [binary, "-f", ifname]
        env["WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD"] = "1"
    elif impl == "meshscale":
        argv = [*meshscale_wireguard_argv(), "-f", ifname]
    else:
        raise ValueError(f"unknown implementation {impl!r}")
    proc = host.spawn(argv, env=env, log_name=f"{host.name}-{ifname}")
    sock = UAPI_DIR / f"{ifname}.sock"
    deadline = time.monotonic() + START_TIMEOUT
    while not sock.exists():
        if time.monotonic() > deadline or not proc.running:
            log = proc.log_text()
            proc.stop()
            raise RuntimeError(f"{impl} did not create {sock}: {log[-2000:]}")
        time.sleep(0.05)
    priv, pub = wg_genkey()
    keyfile = (log_dir or Path("/tmp")) / f"{ifname}.key"
    keyfile.write_text(priv + "\n")
    keyfile.chmod(0o600)
    end = WGEnd(
        host, impl, ifname, proc, priv, pub, f"10.100.0.{index}", f"fd00:100::{index}", port
    )
    end.wg("set", ifname, "private-key", str(keyfile), "listen-port", str(port))
    host.run(["ip", "link", "set", ifname, "mtu", str(mtu), "up"])
    host.run(["ip", "addr", "add", f"{end.tunnel_ip}/24", "dev", ifname])
    host.run(["ip", "-6", "addr", "add", f"{end.tunnel_ip6}/64", "dev", ifname, "nodad"])
    return end


def connect(a: WGEnd, b: WGEnd, *, a_endpoint: bool = True, b_endpoint: bool = True) -> None:
    """Make a and b peers of each other (each knows the other's endpoint if asked)."""
    a.set_peer(b, f"{b.host.ip}:{b.port}" if a_endpoint else None)
    b.set_peer(a, f"{a.host.ip}:{a.port}" if b_endpoint else None)


def upstream_wireguard_go() -> Path:
    return Path(os.environ.get("MESHSCALE_UPSTREAM_WIREGUARD_GO", str(UPSTREAM_WIREGUARD_GO)))


def have_upstream_wireguard_go() -> bool:
    """True when a locally built upstream wireguard-go is there to compare against."""
    return os.access(upstream_wireguard_go(), os.X_OK)


def have_wireguard_go() -> bool:
    return shutil.which("wireguard-go") is not None and shutil.which("wg") is not None
