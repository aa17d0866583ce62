"""status --json fields tailscale always prints (issue #13): CertDomains, ClientVersion, and
per peer PeerAPIURL, TaildropTarget, NoFileSharingReason; Tags/PrimaryRoutes/CapMap only
when set (Go's omitempty)."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from meshscale.node import ipnstate as S

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)


def test_always_printed_and_omitempty_fields() -> None:
    peer = S.PeerStatus(ID="n1", TailscaleIPs=["100.64.0.2", "fd7a:115c:a1e0::2"])
    d = peer.to_json()
    assert d["PeerAPIURL"] is None and d["TaildropTarget"] == S.TAILDROP_IPN_NOT_RUNNING
    assert d["NoFileSharingReason"] == ""
    assert not {"Tags", "PrimaryRoutes", "CapMap"} & set(d)
    peer.Tags, peer.PrimaryRoutes = ["tag:web"], ["10.0.0.0/24"]
    d = peer.to_json()
    assert d["Tags"] == ["tag:web"] and d["PrimaryRoutes"] == ["10.0.0.0/24"]
    top = S.Status(Self=peer).to_json()
    assert top["CertDomains"] is None and "ClientVersion" in top and top["ClientVersion"] is None


def test_peerapi_urls_from_hostinfo_services() -> None:
    hi = {"Services": [{"Proto": "peerapi4", "Port": 40000}, {"Proto": "peerapi6", "Port": 40001},
                       {"Proto": "tcp", "Port": 22}]}  # fmt: skip
    ips = ["100.64.0.2", "fd7a:115c:a1e0::2"]
    assert S.peerapi_urls(hi, ips) == [
        "http://100.64.0.2:40000",
        "http://[fd7a:115c:a1e0::2]:40001",
    ]
    assert S.peerapi_urls({"Services": [{"Proto": "peerapi4", "Port": 40000}]}, ips) == [
        "http://100.64.0.2:40000"
    ]
    assert S.peerapi_urls({}, ips) == []


@given(JSON)
def test_peerapi_urls_never_raises_on_any_hostinfo(services: Any) -> None:
    for url in S.peerapi_urls({"Services": services}, ["100.64.0.2", "fd7a::2"]):
        assert url.startswith("http://")
