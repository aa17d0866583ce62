from __future__ import annotations

import argparse

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshscale.cli.common import find_peer, parse_bool, parse_duration
from meshscale.cli.localclient import CLIError


@pytest.mark.parametrize(
    ("text", "secs"), [("30s", 30.0), ("2m", 120.0), ("500ms", 0.5), ("1.5", 1.5), ("1h", 3600.0)]
)
def test_durations(text, secs):
    assert parse_duration(text) == secs


@given(st.text(max_size=12))
def test_parsers_only_raise_argument_type_error(text):
    for fn in (parse_duration, parse_bool):
        try:
            fn(text)
        except argparse.ArgumentTypeError:
            pass


def test_find_peer_by_ip_names_and_host():
    st_ = {"Peer": {"k": {"TailscaleIPs": ["100.64.0.2", "fd7a:115c:a1e0::2"],
                          "DNSName": "alpha.ms.lab.", "HostName": "Alpha-Box"}}}  # fmt: skip
    for q in ("100.64.0.2", "fd7a:115c:a1e0::2", "alpha", "alpha.ms.lab", "ALPHA.ms.lab.",
              "alpha-box"):  # fmt: skip
        assert find_peer(st_, q)["HostName"] == "Alpha-Box"
    with pytest.raises(CLIError, match="no peer found"):
        find_peer(st_, "100.64.0.3")
    with pytest.raises(CLIError):
        find_peer({"Peer": None}, "x")
