"""Login profiles: several accounts or tailnets on one device (tailscale ipn/ipnlocal profiles).

A profile is one login: its node key, prefs, user and tailnet. The machine key belongs to the
device and is shared by all profiles. The state file holds the current profile at its top
level (as before profiles existed) and every saved profile under ``Profiles`` (store.py). A
profile is saved, with a fresh short hex ID, when its first login succeeds; until then the
current profile is "empty" (``State.current_profile == ""``), as tailscale's new profiles are.

Sans-IO: these functions change a ``State``; the backend saves it and restarts the session.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from meshscale.key import NodePrivate

from .prefs import Prefs
from .store import LoginInfo, Profile, State

MAX_PROFILES = 64  # saved profiles per device; far more than anyone switches between


class ProfileError(ValueError):
    """No such profile, or too many."""


def snapshot(st: State) -> Profile:
    """The current profile as a saved entry (its ID may be "" while it is empty)."""
    return Profile(st.current_profile, st.node_key, st.old_node_key, st.prefs, st.login,
                   st.tailnet)  # fmt: skip


def _stash(st: State) -> None:
    if st.current_profile:
        st.profiles[st.current_profile] = snapshot(st)


def _adopt(st: State, p: Profile) -> None:
    st.current_profile = p.ID
    st.node_key, st.old_node_key = p.node_key, p.old_node_key
    st.prefs, st.login, st.tailnet = p.prefs, p.login, p.tailnet


def new_id(st: State, rand: Callable[[int], bytes]) -> str:
    """Four hex digits (tailscale's profile IDs look the same), unused on this device."""
    for _ in range(1000):
        pid = rand(2).hex()
        if pid not in st.profiles and pid != st.current_profile:
            return pid
    raise ProfileError("cannot find an unused profile ID")


def on_login(st: State, rand: Callable[[int], bytes]) -> None:
    """A login succeeded (``st.login`` is set): save the profile. A saved profile of the same
    user on the same control server is this one logging in again: it keeps that ID."""
    if st.current_profile:
        return
    same = [p.ID for p in st.profiles.values() if p.login.UserID == st.login.UserID
            and p.prefs.ControlURL == st.prefs.ControlURL]  # fmt: skip
    if same:
        del st.profiles[same[0]]
        st.current_profile = same[0]
        return
    if len(st.profiles) >= MAX_PROFILES:
        raise ProfileError(f"too many profiles ({MAX_PROFILES}); log out of one first")
    st.current_profile = new_id(st, rand)


def switch(st: State, pid: str) -> None:
    """Make saved profile ``pid`` current; the current one stays saved."""
    if pid == st.current_profile:
        return
    target = st.profiles.get(pid)
    if target is None:
        raise ProfileError(f"no profile with ID {pid[:32]!r}")
    _stash(st)
    del st.profiles[pid]
    _adopt(st, target)


def to_empty(st: State, rand: Callable[[int], bytes]) -> bool:
    """Start a new, empty profile (``meshscale login``): a new node key and default prefs.
    The current profile stays saved. Already on an empty profile: nothing changes (False)."""
    if not st.current_profile:
        return False
    _stash(st)
    _adopt(st, Profile("", NodePrivate.generate(rand(32)), None, Prefs(), LoginInfo(), ""))
    return True


def forget_current(st: State) -> None:
    """Logout: the current profile is no longer saved (its keys are rotated by the caller)."""
    st.profiles.pop(st.current_profile, None)
    st.current_profile = ""
    st.tailnet = ""


def login_profile(p: Profile) -> dict[str, Any]:
    """tailscale's ipn.LoginProfile JSON."""
    return {
        "ID": p.ID,
        "Name": p.login.LoginName,
        "NetworkProfile": {"MagicDNSName": p.tailnet, "DomainName": p.tailnet},
        "Key": f"profile-{p.ID}" if p.ID else "",
        "UserProfile": {"ID": p.login.UserID, "LoginName": p.login.LoginName,
                        "DisplayName": p.login.DisplayName},
        "ControlURL": p.prefs.ControlURL,
    }  # fmt: skip


def listing(st: State) -> list[dict[str, Any]]:
    """Every saved profile, the current one included (once saved), in a stable order."""
    all_ = dict(st.profiles)
    if st.current_profile:
        all_[st.current_profile] = snapshot(st)
    ordered = sorted(all_.values(), key=lambda p: (p.tailnet, p.login.LoginName, p.ID))
    return [login_profile(p) for p in ordered]
