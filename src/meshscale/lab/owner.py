"""Who owns which lab namespaces, and cleanup of labs whose owner died.

Every Lab claims its run prefix by creating /run/meshscale-lab/<prefix>.pid exclusively (O_EXCL)
before it creates any namespace, and removes it after deleting them. The file holds the owner's
PID and its start time (field 22 of /proc/PID/stat), so a recycled PID is not taken for the
owner. A namespace named "<prefix>-..." whose owner is gone is left over by a crashed run.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

from meshscale.lab import netns

OWNER_DIR = Path("/run/meshscale-lab")
# A claim file that cannot be parsed may be one being written right now; leave it alone this long.
UNPARSABLE_GRACE = 60.0  # seconds


def _start_time(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces; fields after its closing ")" are plain.
    fields = stat[stat.rindex(")") + 2 :].split()
    return fields[19]  # field 22 overall


def owner_path(prefix: str) -> Path:
    return OWNER_DIR / f"{prefix}.pid"


def claim(prefix: str) -> bool:
    """Create the claim file for `prefix`; False if some run already holds that prefix."""
    OWNER_DIR.mkdir(parents=True, exist_ok=True)
    pid = os.getpid()
    try:
        fd = os.open(owner_path(prefix), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        f.write(f"{pid} {_start_time(pid)}\n")
    return True


def release(prefix: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        owner_path(prefix).unlink()


def owner_alive(path: Path) -> bool:
    try:
        text = path.read_text()
        pid_s, start = text.split()
        pid = int(pid_s)
    except (OSError, ValueError):
        try:
            return time.time() - path.stat().st_mtime < UNPARSABLE_GRACE
        except OSError:
            return False
    return _start_time(pid) == start


def destroy_namespace(ns: str) -> list[str]:
    """Kill every process in `ns` by PID, delete it and its /etc/netns dir; return errors."""
    errors: list[str] = []
    for _ in range(3):  # Bounded: a process may fork while we kill its parent.
        pids = netns.netns_pids(ns)
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)
    try:
        netns.netns_delete(ns)
    except netns.LabError as e:
        errors.append(str(e))
    netns.remove_etc_dir(ns)
    return errors


def cleanup_stale(prefix: str = "ms") -> list[str]:
    """Remove namespaces left by earlier lab runs whose owner process is dead.

    Only runs whose prefix starts with `prefix` and that left a claim file are touched: a
    namespace without a claim was not made by a Lab. Returns the namespaces removed.
    """
    removed: list[str] = []
    try:
        claims = sorted(OWNER_DIR.glob(f"{prefix}*.pid"))
    except OSError:
        return removed
    for path in claims:
        if owner_alive(path):
            continue
        run = path.name.removesuffix(".pid")
        for ns in netns.netns_list():
            if ns.startswith(run + "-"):
                destroy_namespace(ns)
                removed.append(ns)
        for d in netns.NETNS_ETC_DIR.glob(run + "-*") if netns.NETNS_ETC_DIR.exists() else []:
            netns.remove_etc_dir(d.name)
        release(run)
    return removed
