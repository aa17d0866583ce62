"""The system's DNS configuration under meshscaled (tailscale net/dns direct.go, resolved.go).

direct mode (`DirectManager`): the original /etc/resolv.conf is copied to a backup in the
state directory (with the symlink target, if it was a symlink), and the file is replaced by
ours: quad-100's two addresses, our search domains followed by the original ones. `restore`
puts the original back byte for byte; `recover` does that at start-up after a crash (our
file in place and a backup present). The file is written by rename when possible and in
place when it is a mount point (``ip netns exec`` bind-mounts /etc/netns/NS/resolv.conf over
it, so each lab namespace has its own); `trampled` notices someone else rewriting it.

The backup lives in the state directory, not next to resolv.conf: in a namespace /etc is the
machine's, and only resolv.conf itself is private.

`ResolvedManager` configures systemd-resolved through ``resolvectl`` when it owns the file
(DNS on our interface, search and routing domains, default-route), and `revert`s the link.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from meshscale.dns import resolvconf

log = logging.getLogger("meshscale.magicdns")

RESOLV_CONF = Path("/etc/resolv.conf")
BACKUP_NAME = "resolv.pre-meshscale-backup.conf"


def _write(path: Path, text: str) -> None:
    """Atomically by rename; in place if `path` is a mount point (EBUSY) or the rename
    cannot cross into it (EXDEV)."""
    tmp = path.with_name(f".{path.name}.meshscale.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
        return
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if exc.errno not in (errno.EBUSY, errno.EXDEV, errno.EACCES, errno.EPERM,
                             errno.EROFS):  # fmt: skip
            raise
    with open(path, "r+" if path.exists() else "w", encoding="utf-8") as f:
        f.seek(0)
        f.write(text)
        f.truncate()


class DirectManager:
    mode = "direct"

    def __init__(self, backup_dir: Path, path: Path = RESOLV_CONF) -> None:
        self.path = path
        self.backup = backup_dir / BACKUP_NAME
        self.link = backup_dir / (BACKUP_NAME + ".symlink")
        self._written = ""

    def _read(self) -> str:
        try:
            return self.path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def original(self) -> resolvconf.ResolvConf:
        """The system's own configuration: the backup while ours is in place."""
        text = self._read()
        if resolvconf.is_ours(text) and self.backup.exists():
            text = self.backup.read_text(encoding="utf-8", errors="replace")
        return resolvconf.parse(text)

    @property
    def active(self) -> bool:
        return bool(self._written)

    def set(self, nameservers: Sequence[str], search: Sequence[str]) -> None:
        """Put our file in place (backing the original up the first time). Raises OSError."""
        current = self._read()
        if not resolvconf.is_ours(current) or not self.backup.exists():
            if resolvconf.is_ours(current):
                current = ""  # ours without a backup (someone removed it): nothing to keep
            self.backup.parent.mkdir(parents=True, exist_ok=True)
            if self.path.is_symlink():
                self.link.write_text(os.readlink(self.path), encoding="utf-8")
            else:
                self.link.unlink(missing_ok=True)
            tmp = self.backup.with_suffix(".tmp")
            tmp.write_text(current, encoding="utf-8")
            os.replace(tmp, self.backup)
        orig = self.original()
        text = resolvconf.render(nameservers, [*search, *orig.search], str(self.backup))
        if self.path.is_symlink():
            self.path.unlink()  # replace the link itself, never the file it points to
        _write(self.path, text)
        self._written = text
        log.info("DNS: %s now points at %s", self.path, ", ".join(nameservers))

    def trampled(self) -> bool:
        """True when we wrote the file and someone else has rewritten it since."""
        return bool(self._written) and self._read() != self._written

    def restore(self) -> None:
        """Put the original back if the file in place is ours; drop a stale backup."""
        self._written = ""
        if not self.backup.exists():
            return
        if resolvconf.is_ours(self._read()):
            text = self.backup.read_text(encoding="utf-8")
            if self.link.exists():
                target = self.link.read_text(encoding="utf-8")
                with contextlib.suppress(FileNotFoundError):
                    self.path.unlink()
                os.symlink(target, self.path)
            else:
                _write(self.path, text)
            log.info("DNS: %s restored", self.path)
        else:
            log.info("DNS: %s was replaced by someone else; dropping our backup", self.path)
        self.backup.unlink(missing_ok=True)
        self.link.unlink(missing_ok=True)

    def recover(self) -> bool:
        """At start-up: undo what a crashed run left behind. True if something was undone."""
        if not self.backup.exists():
            return False
        ours = resolvconf.is_ours(self._read())
        self.restore()
        return ours


class ResolvedManager:
    """systemd-resolved, per link, through resolvectl (resolved.go's SetLinkDNS etc.)."""

    mode = "systemd-resolved"

    def __init__(self, ifname: str, resolvectl: str = "resolvectl",
                 path: Path = RESOLV_CONF) -> None:  # fmt: skip
        self.ifname = ifname
        self.resolvectl = resolvectl
        self.path = path
        self._active = False

    @property
    def active(self) -> bool:
        return self._active

    def _run(self, *args: str) -> None:
        res = subprocess.run([self.resolvectl, *args], capture_output=True, text=True,
                             timeout=5, check=False)  # fmt: skip
        if res.returncode != 0:
            raise OSError(f"resolvectl {' '.join(args)}: {res.stderr.strip() or res.returncode}")

    def original(self) -> resolvconf.ResolvConf:
        return resolvconf.ResolvConf()  # resolved keeps the other links' servers itself

    def set(self, nameservers: Sequence[str], search: Sequence[str],
            routes: Sequence[str] = (), default_route: bool = True) -> None:  # fmt: skip
        domains = [d.strip(".") for d in search if d.strip(".")]
        domains += ["~" + r.strip(".") for r in routes if r.strip(".")]
        if default_route and not routes:
            domains.append("~.")
        self._run("dns", self.ifname, *nameservers)
        self._run("domain", self.ifname, *domains)
        self._run("default-route", self.ifname, "yes" if default_route else "no")
        for setting in ("llmnr", "mdns", "dnssec", "dnsovertls"):
            with contextlib.suppress(OSError):
                self._run(setting, self.ifname, "no")
        with contextlib.suppress(OSError):
            self._run("flush-caches")
        self._active = True

    def trampled(self) -> bool:
        return False

    def restore(self) -> None:
        if self._active:
            self._active = False
            with contextlib.suppress(OSError):
                self._run("revert", self.ifname)

    def recover(self) -> bool:
        return False  # the link goes away with the interface; resolved forgets it


OSConfigurator = DirectManager | ResolvedManager


def choose(backup_dir: Path, ifname: str, path: Path = RESOLV_CONF) -> OSConfigurator:
    """resolved when it owns resolv.conf and resolvectl is here, else direct (with a loud
    warning when resolved owns the file but cannot be driven)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    if resolvconf.owner(text) == "systemd-resolved" or path.resolve().parent == Path(
        "/run/systemd/resolve"
    ):
        tool = shutil.which("resolvectl")
        if tool is not None and Path("/run/systemd/resolve").is_dir():
            return ResolvedManager(ifname, tool, path)
        log.warning(
            "DNS: systemd-resolved owns %s but resolvectl is not usable; writing the file "
            "directly (direct mode)", path,
        )  # fmt: skip
    return DirectManager(backup_dir, path)


__all__ = ["DirectManager", "OSConfigurator", "ResolvedManager", "choose"]
