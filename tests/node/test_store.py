from __future__ import annotations

import json
import os
import stat

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshscale.node.prefs import Prefs, PrefsError
from meshscale.node.store import State, StateError, StateStore


def _rand(n: int) -> bytes:
    return os.urandom(n)


def test_create_then_reload_keeps_identity(tmp_path):
    store = StateStore(tmp_path / "sub" / "meshscaled.state")
    first = store.load_or_create(_rand)
    first.prefs.ControlURL = "http://127.0.0.1:8080"
    first.prefs.WantRunning = True
    store.save(first)
    again = StateStore(store.path).load_or_create(_rand)
    assert again.machine_key == first.machine_key
    assert again.node_key == first.node_key
    assert again.disco_key == first.disco_key
    assert again.prefs == first.prefs
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    text = store.path.read_text()
    assert first.node_key.text() in text and text.count("privkey:") == 3
    assert not [p for p in store.path.parent.iterdir() if p.name.endswith(".tmp")]


def test_missing_file_is_none(tmp_path):
    assert StateStore(tmp_path / "nope").load() is None


@pytest.mark.parametrize(
    "content",
    [b"not json", b"[]", b'{"MachineKey": 1}', b'{"MachineKey": "privkey:zz", "NodeKey": "x"}'],
)
def test_corrupt_file_raises_state_error(tmp_path, content):
    p = tmp_path / "state"
    p.write_bytes(content)
    with pytest.raises(StateError):
        StateStore(p).load()


def test_wrong_pref_type_rejected(tmp_path):
    st_ = State.new(_rand).to_json()
    st_["Prefs"] = {"WantRunning": "yes"}
    p = tmp_path / "state"
    p.write_text(json.dumps(st_))
    with pytest.raises(StateError, match="WantRunning"):
        StateStore(p).load()


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=12), c,
                                                                        max_size=4),
                    max_leaves=12))  # fmt: skip
def test_state_from_json_only_raises_state_error(obj):
    try:
        State.from_json(obj)
    except StateError:
        pass


@given(st.dictionaries(st.sampled_from(["ControlURL", "Hostname", "WantRunning", "LoggedOut",
                                        "CorpDNS", "AdvertiseTags", "Other"]),
                       st.none() | st.booleans() | st.text(max_size=5)
                       | st.lists(st.text(max_size=5) | st.integers(), max_size=2)))  # fmt: skip
def test_prefs_from_json_only_raises_prefs_error(obj):
    try:
        p = Prefs.from_json(obj)
    except PrefsError:
        return
    assert Prefs.from_json(p.to_json()) == p
