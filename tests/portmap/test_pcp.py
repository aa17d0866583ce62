"""meshscale.portmap.pcp: RFC 6887 MAP layouts, nonce handling and the only-ParseError invariant."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshscale.portmap import ParseError, pcp

CLIENT = ipaddress.IPv4Address("192.168.1.10")
NONCE = bytes(range(1, 13))


def test_map_request_layout() -> None:
    # RFC 6887 §7.1 header + §11.1 MAP body, IPv4 client as an IPv4-mapped IPv6 address.
    req = pcp.map_request(CLIENT, 41641, NONCE, lifetime=7200)
    assert len(req) == 60
    assert req[:8] == bytes.fromhex("02 01 0000 00001c20")
    assert req[8:24] == bytes.fromhex("00000000000000000000ffff c0a8010a")
    assert req[24:36] == NONCE
    assert req[36:44] == bytes.fromhex("11 000000 a2a9 0000")
    # §11.1: no suggestion = the all-zeros IPv4 address ::ffff:0.0.0.0.
    assert req[44:60] == bytes.fromhex("00000000000000000000ffff00000000")


def test_release_is_lifetime_zero_with_same_nonce() -> None:
    # RFC 6887 §15: deleting a mapping is a MAP with lifetime 0 and the mapping's nonce.
    rel = pcp.release_request(CLIENT, 41641, NONCE)
    assert rel[4:8] == b"\0\0\0\0" and rel[24:36] == NONCE


def test_announce_request_is_a_bare_header() -> None:
    assert pcp.announce_request(CLIENT) == bytes.fromhex("02000000 00000000") + (
        bytes.fromhex("00000000000000000000ffffc0a8010a")
    )


def test_map_request_refuses_bad_nonce_and_ports() -> None:
    with pytest.raises(ValueError):
        pcp.map_request(CLIENT, 1, b"short")
    with pytest.raises(ValueError):
        pcp.map_request(CLIENT, 65536, NONCE)


def _map_response(result: int = 0, lifetime: int = 7200, extra: bytes = b"") -> bytes:
    # RFC 6887 §7.2 header: vers 2, R|MAP, reserved, result, lifetime, epoch 77, 12 reserved.
    header = bytes.fromhex("02 81 00") + bytes((result,)) + lifetime.to_bytes(4, "big")
    header += (77).to_bytes(4, "big") + bytes(12)
    body = (
        NONCE
        + bytes.fromhex("11 000000 a2a9 c350")
        + bytes.fromhex("00000000000000000000ffffcb007107")
    )
    return header + body + extra


def test_parse_map_response() -> None:
    resp = pcp.parse_response(_map_response())
    assert resp == pcp.MapResponse(
        0, 7200, 77, NONCE, 17, 41641, 50000, ipaddress.IPv4Address("203.0.113.7")
    )


def test_parse_map_response_skips_options() -> None:
    # RFC 6887 §7.3: an option is code, reserved, length and data padded to 4 bytes.
    option = bytes.fromhex("02 00 0010") + bytes(16)  # PREFER_FAILURE-like THIRD_PARTY shape
    resp = pcp.parse_response(_map_response(extra=option))
    assert isinstance(resp, pcp.MapResponse) and resp.external_port == 50000


def test_parse_error_result_keeps_code() -> None:
    resp = pcp.parse_response(_map_response(result=8, lifetime=30))
    assert isinstance(resp, pcp.MapResponse) and resp.reason == "NO_RESOURCES"


def test_natpmp_server_answers_unsupported_version() -> None:
    # RFC 6887 §9: a NAT-PMP server replies to PCP with version 0, result 1 (Unsupported Version).
    resp = pcp.parse_response(bytes.fromhex("0081 0001 00000010"))
    assert resp == pcp.VersionMismatch(0, 1)


def test_parse_announce_response() -> None:
    data = bytes.fromhex("02 80 00 00 00000000 00000009") + bytes(12)
    assert pcp.parse_response(data) == pcp.AnnounceResponse(0, 9)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x02\x81",
        _map_response()[:40],  # MAP body truncated
        _map_response()[:-1],  # not a whole number of words
        bytes.fromhex("02 01 00 00") + bytes(56),  # a request
        bytes.fromhex("02 82 00 00") + bytes(56),  # PEER: not asked for
        _map_response() + bytes(1100),  # over the §7 size limit
    ],
)
def test_parse_rejects(data: bytes) -> None:
    with pytest.raises(ParseError):
        pcp.parse_response(data)


@given(
    st.binary(min_size=12, max_size=12),
    st.integers(0, 65535),
    st.integers(0, 65535),
    st.integers(0, 2**32 - 1),
    st.ip_addresses().filter(lambda a: getattr(a, "ipv4_mapped", None) is None),
)
def test_map_round_trip(
    nonce: bytes, internal: int, external: int, life: int, ext_ip: object
) -> None:
    assert isinstance(ext_ip, ipaddress.IPv4Address | ipaddress.IPv6Address)
    req = pcp.map_request(
        CLIENT, internal, nonce, lifetime=life, external_port=external, external_address=ext_ip
    )
    # A server granting exactly what was suggested: response header + the request's MAP body.
    resp = bytes((2, 0x81, 0, 0)) + req[4:8] + bytes(16) + req[24:60]
    parsed = pcp.parse_response(resp)
    assert parsed == pcp.MapResponse(0, life, 0, nonce, 17, internal, external, ext_ip)


@given(st.binary(max_size=128))
def test_parser_raises_only_parse_error(data: bytes) -> None:
    try:
        pcp.parse_response(data)
    except ParseError:
        pass
