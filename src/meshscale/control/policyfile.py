"""PolicyFile: ``policy.mode: file``, the policy file as the source of truth.

The file is loaded at start (a bad file stops the server from starting, as Headscale
does), and again on SIGHUP and whenever it changes on disk (``watch`` polls its stat
signature: modification time, size and inode, so an editor's rename-over counts). A text
the policy engine refuses on reload is logged with its message and the policy in force
stays in force; the server keeps running. Each accepted text becomes a policy version
(``policy history``), with source ``file``.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

from meshscale.control.config import ConfigError
from meshscale.control.models import InvalidArgument
from meshscale.control.state import State

log = logging.getLogger("meshscale.control")

Signature = tuple[int, int, int]


class PolicyFile:
    def __init__(self, path: Path, state: State) -> None:
        self.path = path
        self.state = state
        self.seen: Signature | None = None  # the stat signature last read
        self.reloads = 0  # texts taken
        self.refused = 0  # texts refused on reload

    def signature(self) -> Signature | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def load(self) -> bool:
        """Read the file into State; True if the text changed. ConfigError (with the
        policy's own message, naming line and column) if it cannot be read or is refused;
        State is then unchanged."""
        self.seen = self.signature()
        try:
            text = self.path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) else "not UTF-8"
            raise ConfigError(f"config: policy.path: cannot read {self.path}: {why}") from exc
        if text == self.state.policy:
            return False
        try:
            version = self.state.set_policy(text, "file")
        except InvalidArgument as exc:
            self.refused += 1
            raise ConfigError(
                f"policy.path {self.path}: refused, keeping the policy in force: {exc}"
            ) from exc
        self.reloads += 1
        log.info("policy loaded from %s (version %d)", self.path, version.version)
        return True

    def reload(self) -> bool:
        """``load`` for SIGHUP and the watcher: a failure is logged, never raised."""
        try:
            return self.load()
        except ConfigError as exc:
            log.error("%s", exc)
            return False

    async def watch(self, interval: float = 0.25) -> None:
        """Reload whenever the file's stat signature changes (until cancelled)."""
        while True:
            await asyncio.sleep(interval)
            sig = self.signature()
            if sig is not None and sig != self.seen:
                self.reload()
