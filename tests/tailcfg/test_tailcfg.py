"""tailcfg codec: Go encoding/json behaviour the clients rely on (docs/protocol/control.md §0, 4,
6)."""

from __future__ import annotations

import contextlib
import json
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshscale.key import DiscoPrivate, MachinePrivate, NodePrivate
from meshscale.tailcfg import (
    LOGOUT_EXPIRY,
    PORT_RANGE_ANY,
    DERPMap,
    DERPNode,
    DERPRegion,
    DNSConfig,
    FilterRule,
    MapRequest,
    MapResponse,
    NetPortRange,
    Node,
    OverTLSPublicKeyResponse,
    ParseError,
    PeerChange,
    RegisterRequest,
    RegisterResponse,
    Resolver,
    dumps,
    format_time,
    loads,
    parse_time,
    to_json,
)

NK = NodePrivate(bytes([1]) * 32).public()
DK = DiscoPrivate(bytes([2]) * 32).public()
MK = MachinePrivate(bytes([3]) * 32).public()

# Shaped like what tailscaled v1.90 sends (field set from tailcfg.RegisterRequest), with an
# extra unknown key that must be ignored.
REGISTER_JSON = (
    '{{"Version":130,"NodeKey":"{}","OldNodeKey":"nodekey:{}","NLKey":"nlpub:{}",'
    '"Auth":{{"AuthKey":"tskey-abc"}},"Expiry":"0001-01-01T00:00:00Z","Followup":"",'
    '"Hostinfo":{{"IPNVersion":"1.90.9","OS":"linux","Hostname":"box",'
    '"NetInfo":{{"PreferredDERP":900,"WorkingUDP":true,"DERPLatency":{{"900-v4":0.01}}}},'
    '"sshHostKeys":["ssh-ed25519 AAAA"],"FutureField":{{"x":1}}}},'
    '"NodeKeySignature":null,"SomethingNew":42}}'
).format(NK.text(), "0" * 64, "ab" * 32)


def test_register_request_decodes() -> None:
    req = loads(RegisterRequest, REGISTER_JSON)
    assert req.Version == 130
    assert req.NodeKey == NK
    assert req.OldNodeKey is None  # zero key
    assert req.Auth is not None
    assert req.Auth.AuthKey == "tskey-abc"
    assert req.Expiry is None
    assert req.Hostinfo is not None
    assert req.Hostinfo.Hostname == "box"
    assert req.Hostinfo.NetInfo is not None
    assert req.Hostinfo.NetInfo.PreferredDERP == 900
    assert req.Hostinfo.NetInfo.WorkingUDP is True
    assert req.Hostinfo.SSH_HostKeys == ["ssh-ed25519 AAAA"]


def test_register_request_encodes_like_go() -> None:
    req = RegisterRequest(Version=130, NodeKey=NK, Expiry=LOGOUT_EXPIRY)
    d = json.loads(dumps(req))
    assert d["OldNodeKey"] == "nodekey:" + "0" * 64  # no omitempty: zero key text
    assert d["Expiry"] == "1970-01-01T00:02:03Z"
    assert "Auth" not in d
    assert "Ephemeral" not in d
    assert d["Hostinfo"] is None
    assert d["NodeKeySignature"] is None


def test_decode_is_case_insensitive_like_go() -> None:
    req = loads(MapRequest, f'{{"nodekey":"{NK.text()}","STREAM":true,"compress":"zstd"}}')
    assert req.NodeKey == NK
    assert req.Stream
    assert req.Compress == "zstd"


def test_register_response_always_has_core_fields() -> None:
    d = json.loads(dumps(RegisterResponse(MachineAuthorized=True)))
    assert d["MachineAuthorized"] is True
    assert d["AuthURL"] == ""
    assert d["Error"] == ""
    assert d["NodeKeyExpired"] is False
    assert d["User"]["ID"] == 0
    assert "Created" not in d["User"]


def test_key_response_lower_camel() -> None:
    d = json.loads(dumps(OverTLSPublicKeyResponse(publicKey=MK)))
    assert d == {"legacyPublicKey": "mkey:" + "0" * 64, "publicKey": MK.text()}


def test_node_omitempty_and_pointer_semantics() -> None:
    n = Node(ID=7, StableID="7", Name="a.example.", Key=NK, DiscoKey=DK, Online=False)
    d = to_json(n)
    assert d["Online"] is False  # *bool set to false is emitted
    assert "MachineAuthorized" not in d  # plain bool false is omitted
    assert "KeyExpiry" not in d
    assert "LastSeen" not in d
    assert "Machine" not in d
    assert d["Addresses"] == []  # not omitempty
    assert d["Key"] == NK.text()
    assert d["DiscoKey"] == DK.text()
    assert "AllowedIPs" not in d  # None means "same as Addresses" for capver >= 112
    n.AllowedIPs = []
    assert to_json(n)["AllowedIPs"] == []


def test_map_response_delta_fields() -> None:
    mr = MapResponse(
        PeersRemoved=[3, 4],
        OnlineChange={5: True},
        PeersChangedPatch=[PeerChange(NodeID=5, Endpoints=["1.2.3.4:41641"], Online=True)],
        CollectServices=False,
        PacketFilters={
            "base": [FilterRule(SrcIPs=["*"], DstPorts=[NetPortRange("*", None, PORT_RANGE_ANY)])],
            "old": None,
        },
    )
    raw = dumps(mr)
    d = json.loads(raw)
    assert d["OnlineChange"] == {"5": True}
    assert d["CollectServices"] is False  # opt.Bool is a bare bool
    assert d["PacketFilters"]["old"] is None
    assert d["PacketFilters"]["base"] == [
        {"SrcIPs": ["*"], "DstPorts": [{"IP": "*", "Ports": {"First": 0, "Last": 65535}}]}
    ]
    assert "Peers" not in d
    assert "Node" not in d
    back = loads(MapResponse, raw)
    assert back.OnlineChange == {5: True}
    assert back.PeersChangedPatch[0].Endpoints == ["1.2.3.4:41641"]
    assert back.PacketFilters["old"] is None


def test_empty_bytes_are_omitted() -> None:
    assert to_json(PeerChange(NodeID=4)) == {"NodeID": 4}
    assert "KeySignature" not in to_json(Node(ID=1))


def test_keepalive_is_exact() -> None:
    assert dumps(MapResponse(KeepAlive=True)) == b'{"KeepAlive":true}'


def test_derpmap_region_keys_are_decimal_strings() -> None:
    dm = DERPMap(
        Regions={900: DERPRegion(900, "home", "Home", Nodes=[DERPNode("900a", 900, "derp.lab")])},
        OmitDefaultRegions=True,
    )
    dm.validate()
    d = json.loads(dumps(dm))
    assert list(d["Regions"]) == ["900"]
    assert d["omitDefaultRegions"] is True
    assert d["Regions"]["900"]["Nodes"][0] == {
        "Name": "900a",
        "RegionID": 900,
        "HostName": "derp.lab",
    }
    assert loads(DERPMap, json.dumps(d)) == dm


@pytest.mark.parametrize(
    "regions",
    [
        {900: DERPRegion(901, Nodes=[DERPNode("a", 901, "h")])},
        {900: DERPRegion(900, Nodes=[])},
    ],
)
def test_derpmap_validate_rejects_crashers(regions) -> None:
    with pytest.raises(ValueError):
        DERPMap(Regions=regions).validate()


def test_dns_routes_keep_empty_lists() -> None:
    cfg = DNSConfig(Resolvers=[Resolver("1.1.1.1")], Routes={"ts.example": []}, Proxied=True)
    d = json.loads(dumps(cfg))
    assert d == {"Resolvers": [{"Addr": "1.1.1.1"}], "Routes": {"ts.example": []}, "Proxied": True}


def test_time_format_matches_go() -> None:
    t = datetime(2025, 1, 2, 3, 4, 5, 120000, tzinfo=UTC)
    assert format_time(t) == "2025-01-02T03:04:05.12Z"
    assert format_time(t.replace(microsecond=0)) == "2025-01-02T03:04:05Z"
    assert parse_time("2025-01-02T03:04:05.123456789Z") == t.replace(microsecond=123456)
    assert parse_time("2025-01-02T05:04:05+02:00") == t.replace(microsecond=0)
    assert parse_time("0001-01-01T00:00:00Z") is None


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"[]",
        b"{",
        b'{"Version":"130"}',
        b'{"Version":true}',
        b'{"NodeKey":""}',
        b'{"NodeKey":"discokey:' + b"0" * 64 + b'"}',
        b'{"Expiry":"yesterday"}',
        b'{"Hostinfo":[]}',
        b'{"NodeKeySignature":"***"}',
        b"\xff\xfe",
        b"[" * 100000,
    ],
)
def test_bad_register_requests_raise_parse_error(raw: bytes) -> None:
    with pytest.raises(ParseError):
        loads(RegisterRequest, raw)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)
_keys = st.sampled_from(
    ["Version", "NodeKey", "Hostinfo", "Endpoints", "Stream", "Peers", "Node", "DERPMap",
     "PeersChangedPatch", "OnlineChange", "Regions", "Auth", "Expiry", "PacketFilters"]
)  # fmt: skip


@pytest.mark.slow
@given(st.dictionaries(_keys, _json, max_size=5))
def test_decoders_only_raise_parse_error_on_json(data: dict) -> None:
    raw = json.dumps(data)
    for cls in (RegisterRequest, MapRequest, MapResponse, Node, DERPMap):
        with contextlib.suppress(ParseError):
            obj = loads(cls, raw)
            loads(cls, dumps(obj))  # whatever decodes re-encodes and decodes again


@pytest.mark.slow
@given(st.binary(max_size=200))
def test_decoders_only_raise_parse_error_on_bytes(raw: bytes) -> None:
    for cls in (RegisterRequest, MapResponse):
        with contextlib.suppress(ParseError):
            loads(cls, raw)


@pytest.mark.slow
@given(st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(9999, 1, 1)))
def test_time_roundtrip(t: datetime) -> None:
    t = t.replace(tzinfo=UTC)
    assert parse_time(format_time(t)) == t


def test_naive_and_offset_datetimes_encode_in_utc() -> None:
    naive = datetime(2025, 1, 2, 3, 4, 5)
    assert format_time(naive) == "2025-01-02T03:04:05Z"
    assert format_time(None) == "0001-01-01T00:00:00Z"
    with pytest.raises(ParseError):
        parse_time("2025-13-02T03:04:05Z")


def test_numbers_follow_go() -> None:
    assert loads(MapRequest, b'{"Version":130.0}').Version == 130
    with pytest.raises(ParseError):
        loads(MapRequest, b'{"Version":1.5}')
    assert loads(DERPMap, b'{"HomeParams":{"RegionScore":{"900":2}}}').HomeParams.RegionScore == {
        900: 2.0
    }
    with pytest.raises(ParseError):
        loads(DERPMap, b'{"HomeParams":{"RegionScore":{"900":true}}}')
    with pytest.raises(ParseError):
        loads(DERPMap, b'{"Regions":{"x":{}}}')
    assert to_json(Node(ID=1, KeySignature=b"\x01"))["KeySignature"] == "AQ=="
