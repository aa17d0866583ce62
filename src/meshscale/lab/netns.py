"""Thin wrappers over the `ip`, `nft` and `sysctl` commands for lab network namespaces.

Commands rather than netlink calls: every step the lab takes can be replayed by hand from a shell,
which is what one does when a lab test fails. Every helper here raises `LabError` (with the
command's stderr) instead of `CalledProcessError`, so failures read well in test output.

`ip netns exec NS CMD` is the one way the lab enters a namespace. Besides `setns`, it bind-mounts
every file in /etc/netns/NS/ over /etc/ in a private mount namespace; the lab uses that for a
per-namespace /etc/hosts.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger("meshscale.lab")

NETNS_RUN_DIR = Path("/run/netns")
NETNS_ETC_DIR = Path("/etc/netns")
# Bound on every helper command: `ip` and `nft` answer in milliseconds unless the kernel is stuck.
COMMAND_TIMEOUT = 20.0  # seconds


class LabError(RuntimeError):
    """A lab setup or teardown step failed."""


def run_cmd(
    argv: Sequence[str], *, input: str | None = None, timeout: float = COMMAND_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    """Run a helper command in the current namespace; raise LabError on failure."""
    log.debug("lab: %s", " ".join(argv))
    try:
        res = subprocess.run(
            list(argv),
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise LabError(f"{' '.join(argv)}: {e}") from e
    if res.returncode != 0:
        raise LabError(f"{' '.join(argv)}: exit {res.returncode}: {res.stderr.strip()}")
    return res


def exec_argv(ns: str, argv: Sequence[str]) -> list[str]:
    """The argv that runs `argv` inside namespace `ns`."""
    return ["ip", "netns", "exec", ns, *argv]


def netns_add(ns: str) -> None:
    run_cmd(["ip", "netns", "add", ns])


def netns_delete(ns: str) -> None:
    """Delete a namespace by name; a missing one is not an error."""
    if (NETNS_RUN_DIR / ns).exists():
        run_cmd(["ip", "netns", "del", ns])


def netns_list() -> list[str]:
    """Names of all named network namespaces."""
    try:
        return sorted(os.listdir(NETNS_RUN_DIR))
    except FileNotFoundError:
        return []


def netns_pids(ns: str) -> list[int]:
    """PIDs of processes whose network namespace is `ns` (empty if it is gone)."""
    if not (NETNS_RUN_DIR / ns).exists():
        return []
    try:
        out = run_cmd(["ip", "netns", "pids", ns]).stdout
    except LabError:
        return []
    return [int(tok) for tok in out.split() if tok.isdigit()]


def ns_ip(ns: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`ip -n NS ARGS...`."""
    return run_cmd(["ip", "-n", ns, *args])


def ns_sysctl(ns: str, *settings: str) -> None:
    """Set sysctls ("key=value") inside `ns`; net.* sysctls are per namespace."""
    run_cmd(exec_argv(ns, ["sysctl", "-q", "-w", *settings]))


def ns_nft(ns: str, ruleset: str) -> None:
    """Load an nftables ruleset (text) inside `ns`."""
    run_cmd(exec_argv(ns, ["nft", "-f", "-"]), input=ruleset)


def etc_dir(ns: str) -> Path:
    return NETNS_ETC_DIR / ns


def write_hosts(ns: str, text: str) -> None:
    """Write /etc/netns/NS/hosts in place.

    In place, not by rename: processes already running in the namespace have the old file
    bind-mounted by inode, and rewriting the same inode lets them see new entries.
    """
    d = etc_dir(ns)
    d.mkdir(parents=True, exist_ok=True)
    with open(d / "hosts", "w", encoding="ascii") as f:
        f.write(text)


# Per-namespace resolv.conf. Without it, lookups of names not in the hosts file would go to the
# machine's resolver through the lab and time out; 127.0.0.1 answers "port unreachable" at once.
# It also keeps a daemon that manages DNS (tailscaled) from editing the machine's /etc/resolv.conf.
RESOLV_CONF = "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n"


def write_resolv_conf(ns: str) -> None:
    d = etc_dir(ns)
    d.mkdir(parents=True, exist_ok=True)
    (d / "resolv.conf").write_text(RESOLV_CONF, encoding="ascii")


def remove_etc_dir(ns: str) -> None:
    shutil.rmtree(etc_dir(ns), ignore_errors=True)
