"""meshscale.portmap.natpmp: RFC 6886 layouts, round trips and the only-ParseError invariant."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshscale.portmap import ParseError, natpmp


def test_external_address_request_is_two_bytes() -> None:
    # RFC 6886 §3.2: version 0, opcode 0.
    assert natpmp.external_address_request() == b"\x00\x00"


def test_map_request_layout() -> None:
    # RFC 6886 §3.3: vers 0, op 1 (UDP), reserved 0, internal 41641, suggested 41641, 7200 s.
    req = natpmp.map_request(41641, 41641, 7200)
    assert req == bytes.fromhex("0001 0000 a2a9 a2a9 00001c20")


def test_release_request_zeroes_port_and_lifetime() -> None:
    # RFC 6886 §3.4: delete = lifetime 0 and suggested external port 0.
    assert natpmp.release_request(41641) == bytes.fromhex("0001 0000 a2a9 0000 00000000")


@pytest.mark.parametrize(
    ("port", "ext", "life"), [(-1, 0, 1), (65536, 0, 1), (1, 70000, 1), (1, 1, -1), (1, 1, 2**32)]
)
def test_map_request_refuses_out_of_range(port: int, ext: int, life: int) -> None:
    with pytest.raises(ValueError):
        natpmp.map_request(port, ext, life)


def test_parse_external_address_response() -> None:
    # RFC 6886 §3.2: vers 0, op 128, result 0, epoch 1000, address 203.0.113.7.
    data = bytes.fromhex("0080 0000 000003e8 cb007107")
    assert natpmp.parse_response(data) == natpmp.ExternalAddressResponse(
        0, 1000, ipaddress.IPv4Address("203.0.113.7")
    )


def test_parse_map_response() -> None:
    # RFC 6886 §3.3: op 129, result 0, epoch 5, internal 41641, mapped 50000, lifetime 3600.
    data = bytes.fromhex("0081 0000 00000005 a2a9 c350 00000e10")
    assert natpmp.parse_response(data) == natpmp.MapResponse(1, 0, 5, 41641, 50000, 3600)


def test_parse_error_result_has_a_reason() -> None:
    # RFC 6886 §3.5: result 2 (refused); a short body is still a valid error reply.
    resp = natpmp.parse_response(bytes.fromhex("0081 0002 00000005"))
    assert isinstance(resp, natpmp.ErrorResponse)
    assert resp.reason == "Not Authorized/Refused"


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00\x80\x00\x00\x00\x00\x00",  # 7 bytes
        bytes.fromhex("0080 0000 000003e8"),  # external address missing
        bytes.fromhex("0081 0000 00000005 a2a9"),  # map body truncated
        bytes.fromhex("0001 0000 00000005 a2a9 c350 00000e10"),  # a request, not a response
        bytes.fromhex("0280 0000 000003e8 cb007107"),  # PCP version
        bytes.fromhex("0085 0000 000003e8 cb007107"),  # unknown opcode
    ],
)
def test_parse_rejects(data: bytes) -> None:
    with pytest.raises(ParseError):
        natpmp.parse_response(data)


@given(
    st.integers(0, 65535),
    st.integers(0, 65535),
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**32 - 1),
)
def test_map_round_trip(internal: int, external: int, life: int, epoch: int) -> None:
    req = natpmp.map_request(internal, external, life)
    # A gateway echoing the request's fields back, as §3.3 lays out the response.
    resp = bytes((0, 0x81)) + b"\0\0" + epoch.to_bytes(4, "big") + req[4:8] + req[8:12]
    assert natpmp.parse_response(resp) == natpmp.MapResponse(1, 0, epoch, internal, external, life)


@given(st.binary(max_size=64))
def test_parser_raises_only_parse_error(data: bytes) -> None:
    try:
        natpmp.parse_response(data)
    except ParseError:
        pass
