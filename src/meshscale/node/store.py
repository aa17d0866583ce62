"""The node's state file: keys in upstream text forms, prefs and the last login.

Layout (JSON, mode 0600)::

    {"MachineKey": "privkey:<hex>", "NodeKey": "privkey:<hex>", "DiscoKey": "discoprivkey:<hex>",
     "OldNodeKey": "nodekey:<hex>" | absent,
     "Prefs": {...ipn.Prefs subset...},
     "Login": {"LoginName": ..., "DisplayName": ..., "UserID": N}}

Writes go to a temporary file in the same directory, are fsynced and then renamed over the old
file, so a crash leaves either the old or the new state, never half of one. Keys are created
once and kept: restarting meshscaled keeps the node's identity and therefore its address.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meshscale.key import DiscoPrivate, InvalidKeyError, MachinePrivate, NodePrivate, NodePublic

from .prefs import Prefs, PrefsError

MAX_STATE_BYTES = 1 << 20  # a state file larger than this is not ours (or corrupt)


class StateError(ValueError):
    """The state file exists but cannot be used."""


@dataclass(slots=True)
class LoginInfo:
    LoginName: str = ""
    DisplayName: str = ""
    UserID: int = 0


@dataclass(slots=True)
class State:
    machine_key: MachinePrivate
    node_key: NodePrivate
    disco_key: DiscoPrivate
    old_node_key: NodePublic | None = None
    prefs: Prefs = field(default_factory=Prefs)
    login: LoginInfo = field(default_factory=LoginInfo)

    @classmethod
    def new(cls, rand: Callable[[int], bytes]) -> State:
        return cls(
            MachinePrivate.generate(rand(32)),
            NodePrivate.generate(rand(32)),
            DiscoPrivate.generate(rand(32)),
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "MachineKey": self.machine_key.text(),
            "NodeKey": self.node_key.text(),
            "DiscoKey": self.disco_key.text(),
            "Prefs": self.prefs.to_json(),
            "Login": {
                "LoginName": self.login.LoginName,
                "DisplayName": self.login.DisplayName,
                "UserID": self.login.UserID,
            },
        }
        if self.old_node_key is not None:
            out["OldNodeKey"] = self.old_node_key.text()
        return out

    @classmethod
    def from_json(cls, obj: Any) -> State:
        if not isinstance(obj, dict):
            raise StateError("state file: not a JSON object")
        try:
            st = cls(
                MachinePrivate.from_text(_str(obj, "MachineKey")),
                NodePrivate.from_text(_str(obj, "NodeKey")),
                DiscoPrivate.from_text(_str(obj, "DiscoKey")),
            )
            if "OldNodeKey" in obj:
                st.old_node_key = NodePublic.from_text(_str(obj, "OldNodeKey"))
            st.prefs = Prefs.from_json(obj.get("Prefs", {}))
        except (InvalidKeyError, PrefsError) as exc:
            raise StateError(f"state file: {exc}") from exc
        login = obj.get("Login", {})
        if isinstance(login, dict):
            st.login = LoginInfo(
                str(login.get("LoginName", "")),
                str(login.get("DisplayName", "")),
                int(login.get("UserID", 0)) if isinstance(login.get("UserID"), int) else 0,
            )
        return st


def _str(obj: dict[str, Any], name: str) -> str:
    v = obj.get(name)
    if not isinstance(v, str):
        raise StateError(f"state file: {name} missing or not a string")
    return v


class StateStore:
    """Loads and atomically saves one state file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> State | None:
        """The saved state, or None when there is no file yet. Raises StateError."""
        try:
            with self.path.open("rb") as f:
                raw = f.read(MAX_STATE_BYTES + 1)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StateError(f"cannot read {self.path}: {exc.strerror}") from exc
        if len(raw) > MAX_STATE_BYTES:
            raise StateError(f"{self.path}: larger than {MAX_STATE_BYTES} bytes")
        try:
            obj = json.loads(raw)
        except ValueError as exc:
            raise StateError(f"{self.path}: not valid JSON") from exc
        return State.from_json(obj)

    def load_or_create(self, rand: Callable[[int], bytes]) -> State:
        st = self.load()
        if st is None:
            st = State.new(rand)
            self.save(st)
        return st

    def save(self, state: State) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        data = json.dumps(state.to_json(), indent=2).encode()
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        with contextlib.suppress(OSError):
            dfd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
