"""The node's state file: keys in upstream text forms, prefs and the last login.

Layout (JSON, mode 0600)::

    {"MachineKey": "privkey:<hex>", "NodeKey": "privkey:<hex>", "DiscoKey": "discoprivkey:<hex>",
     "OldNodeKey": "nodekey:<hex>" | absent,
     "Prefs": {...ipn.Prefs subset...},
     "Login": {"LoginName": ..., "DisplayName": ..., "UserID": N},
     "Tailnet": "example.ts.net",
     "CurrentProfile": "a1b2" | "" (not saved yet),
     "Profiles": {"a1b2": {"NodeKey", "OldNodeKey"?, "Prefs", "Login", "Tailnet"}, ...}}

The top level is the current login profile (profiles.py): a state file from before profiles
existed loads as one unsaved profile. ``Profiles`` holds every saved one, the current included.

Writes go to a temporary file in the same directory, are fsynced and then renamed over the old
file, so a crash leaves either the old or the new state, never half of one. Keys are created
once and kept: restarting meshscaled keeps the node's identity and therefore its address.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meshscale.key import DiscoPrivate, InvalidKeyError, MachinePrivate, NodePrivate, NodePublic

from .prefs import Prefs, PrefsError

PROFILE_ID = re.compile(r"[0-9a-f]{4,16}")
MAX_STATE_BYTES = 1 << 20  # a state file larger than this is not ours (or corrupt)


class StateError(ValueError):
    """The state file exists but cannot be used."""


@dataclass(slots=True)
class LoginInfo:
    LoginName: str = ""
    DisplayName: str = ""
    UserID: int = 0


@dataclass(slots=True)
class Profile:
    """One saved login (profiles.py): what differs between accounts on one device."""

    ID: str
    node_key: NodePrivate
    old_node_key: NodePublic | None
    prefs: Prefs
    login: LoginInfo
    tailnet: str = ""  # the tailnet's domain, from the netmap

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "NodeKey": self.node_key.text(),
            "Prefs": self.prefs.to_json(),
            "Login": _login_json(self.login),
            "Tailnet": self.tailnet,
        }
        if self.old_node_key is not None:
            out["OldNodeKey"] = self.old_node_key.text()
        return out

    @classmethod
    def from_json(cls, pid: str, obj: Any) -> Profile:
        if not isinstance(obj, dict) or not PROFILE_ID.fullmatch(pid):
            raise StateError(f"state file: malformed profile {pid[:32]!r}")
        try:
            old = obj.get("OldNodeKey")
            return cls(
                pid, NodePrivate.from_text(_str(obj, "NodeKey")),
                NodePublic.from_text(old) if isinstance(old, str) else None,
                Prefs.from_json(obj.get("Prefs", {})), _login(obj.get("Login", {})),
                str(obj.get("Tailnet", "")),
            )  # fmt: skip
        except (InvalidKeyError, PrefsError) as exc:
            raise StateError(f"state file: profile {pid}: {exc}") from exc


def _login_json(login: LoginInfo) -> dict[str, Any]:
    return {"LoginName": login.LoginName, "DisplayName": login.DisplayName,
            "UserID": login.UserID}  # fmt: skip


def _login(obj: Any) -> LoginInfo:
    if not isinstance(obj, dict):
        return LoginInfo()
    uid = obj.get("UserID")
    return LoginInfo(str(obj.get("LoginName", "")), str(obj.get("DisplayName", "")),
                     uid if isinstance(uid, int) and not isinstance(uid, bool) else 0)  # fmt: skip


@dataclass(slots=True)
class State:
    machine_key: MachinePrivate
    node_key: NodePrivate
    disco_key: DiscoPrivate
    old_node_key: NodePublic | None = None
    prefs: Prefs = field(default_factory=Prefs)
    login: LoginInfo = field(default_factory=LoginInfo)
    tailnet: str = ""
    current_profile: str = ""  # "" while the current profile is not saved yet
    profiles: dict[str, Profile] = field(default_factory=dict)  # saved, current one apart

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
            "Login": _login_json(self.login),
            "Tailnet": self.tailnet,
            "CurrentProfile": self.current_profile,
        }
        if self.old_node_key is not None:
            out["OldNodeKey"] = self.old_node_key.text()
        saved = {pid: p.to_json() for pid, p in self.profiles.items()}
        if self.current_profile:
            saved[self.current_profile] = Profile(
                self.current_profile, self.node_key, self.old_node_key, self.prefs, self.login,
                self.tailnet,
            ).to_json()  # fmt: skip
        out["Profiles"] = saved
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
        st.login = _login(obj.get("Login", {}))
        st.tailnet = str(obj.get("Tailnet", ""))
        saved = obj.get("Profiles", {})
        if not isinstance(saved, dict):
            raise StateError("state file: Profiles must be an object")
        st.profiles = {str(k): Profile.from_json(str(k), v) for k, v in saved.items()}
        cur = obj.get("CurrentProfile", "")
        st.current_profile = cur if isinstance(cur, str) and cur in st.profiles else ""
        st.profiles.pop(st.current_profile, None)  # the top level is the current one
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
