"""Tests for the UAPI text protocol core: goldens, error table, semantics, fuzz and round trips."""

from __future__ import annotations

import contextlib
import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshscale.wireguard.uapi import (
    IPC_ERROR_INVALID,
    IPC_ERROR_IO,
    IPC_ERROR_PROTOCOL,
    MAX_LINE_SIZE,
    MAX_REQUEST_SIZE,
    UNSET,
    DeviceSnapshot,
    GetRequest,
    PeerChange,
    PeerSnapshot,
    Request,
    SetRequest,
    UAPIError,
    UAPIParser,
    format_endpoint,
    format_errno,
    format_get,
    parse_endpoint,
    parse_requests,
)
from meshscale.wireguard.uapi_client import format_request, parse_get_response, parse_set_response

K1 = bytes(range(32))
K2 = bytes(range(32, 64))
K3 = bytes(range(64, 96))
H1, H2, H3 = K1.hex(), K2.hex(), K3.hex()
ZERO = "00" * 32


def net(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(text, strict=False)


def results(data: bytes, *, eof: bool = True, **limits: int) -> list[Request | UAPIError]:
    """Everything the parser yields for data, errors included, in order."""
    parser = UAPIParser(**limits)
    parser.feed(data)
    if eof:
        parser.feed_eof()
    out: list[Request | UAPIError] = []
    while True:
        try:
            request = parser.next_request()
        except UAPIError as e:
            out.append(e)
            continue
        if request is None:
            return out
        out.append(request)


def errnos(items: list[Request | UAPIError]) -> list[object]:
    return [(i.errno, i.fatal) if isinstance(i, UAPIError) else i for i in items]


# ---- goldens ---------------------------------------------------------------------------------

# What wireguard-go (device/uapi.go IpcGetOperation + IpcHandle) writes for this device.
GOLDEN_GET = (
    f"private_key={H1}\n"
    "listen_port=51820\n"
    "fwmark=3\n"
    f"public_key={H2}\n"
    f"preshared_key={H3}\n"
    "protocol_version=1\n"
    "endpoint=192.0.2.1:51820\n"
    "last_handshake_time_sec=1700000000\n"
    "last_handshake_time_nsec=123456789\n"
    "tx_bytes=1000\n"
    "rx_bytes=2000\n"
    "persistent_keepalive_interval=25\n"
    "allowed_ip=10.100.0.2/32\n"
    "allowed_ip=fd00::/64\n"
    f"public_key={H3}\n"
    f"preshared_key={ZERO}\n"
    "protocol_version=1\n"
    "endpoint=[fe80::1%eth0]:9\n"
    "last_handshake_time_sec=0\n"
    "last_handshake_time_nsec=0\n"
    "tx_bytes=0\n"
    "rx_bytes=0\n"
    "persistent_keepalive_interval=0\n"
    "errno=0\n"
    "\n"
).encode()

GOLDEN_SNAPSHOT = DeviceSnapshot(
    private_key=K1,
    listen_port=51820,
    fwmark=3,
    peers=[
        PeerSnapshot(
            public_key=K2,
            preshared_key=K3,
            endpoint=("192.0.2.1", 51820),
            last_handshake_time_ns=1_700_000_000_123_456_789,
            tx_bytes=1000,
            rx_bytes=2000,
            persistent_keepalive_interval=25,
            allowed_ips=[net("10.100.0.2/32"), net("fd00::/64")],
        ),
        PeerSnapshot(public_key=K3, endpoint=("fe80::1%eth0", 9)),
    ],
)


def test_format_get_golden() -> None:
    assert format_get(GOLDEN_SNAPSHOT) == GOLDEN_GET


def test_parse_get_response_golden() -> None:
    assert parse_get_response(GOLDEN_GET) == GOLDEN_SNAPSHOT


def test_format_get_empty_device_omits_unset_fields() -> None:
    assert format_get(DeviceSnapshot()) == b"errno=0\n\n"
    # An all-zero private key is "no key" (wireguard-go checks IsZero).
    assert format_get(DeviceSnapshot(private_key=bytes(32))) == b"errno=0\n\n"


def test_format_get_ipv4_mapped_uses_go_text() -> None:
    snap = DeviceSnapshot(
        peers=[
            PeerSnapshot(
                public_key=K1,
                endpoint=("::ffff:192.0.2.1", 5),
                allowed_ips=[net("::ffff:10.0.0.0/104")],
            )
        ]
    )
    text = format_get(snap).decode()
    assert "endpoint=[::ffff:192.0.2.1]:5\n" in text
    assert "allowed_ip=::ffff:10.0.0.0/104\n" in text


# What wireguard-tools 1.0.20210914 (src/ipc-uapi.h userspace_set_device) sends for
#   wg set wg0 private-key K listen-port 51820 fwmark 0x3 peer P preshared-key PSK
#      endpoint [2001:db8::1]:4500 persistent-keepalive 25 allowed-ips 10.0.0.0/24,fd00::1/128
GOLDEN_SET = (
    "set=1\n"
    f"private_key={H1}\n"
    "listen_port=51820\n"
    "fwmark=3\n"
    f"public_key={H2}\n"
    f"preshared_key={H3}\n"
    "endpoint=[2001:db8::1]:4500\n"
    "persistent_keepalive_interval=25\n"
    "allowed_ip=10.0.0.0/24\n"
    "allowed_ip=fd00::1/128\n"
    "\n"
).encode()

GOLDEN_SET_REQUEST = SetRequest(
    private_key=K1,
    listen_port=51820,
    fwmark=3,
    peers=[
        PeerChange(
            public_key=K2,
            preshared_key=K3,
            endpoint=("2001:db8::1", 4500),
            persistent_keepalive_interval=25,
            allowed_ips_add=[net("10.0.0.0/24"), net("fd00::1/128")],
        )
    ],
)


def test_parse_set_golden() -> None:
    assert parse_requests(GOLDEN_SET) == [GOLDEN_SET_REQUEST]


def test_format_request_golden() -> None:
    assert format_request(GOLDEN_SET_REQUEST) == GOLDEN_SET
    assert format_request(GetRequest()) == b"get=1\n\n"
    assert format_request(SetRequest()) == b"set=1\n\n"


def test_format_errno() -> None:
    assert format_errno(0) == b"errno=0\n\n"
    assert format_errno(-98) == b"errno=-98\n\n"


# ---- request semantics -------------------------------------------------------------------------


def test_syncconf_style_request() -> None:
    # wg syncconf / setconf: replace_peers, replace_allowed_ips, remove.
    data = (
        f"set=1\nprivate_key={H1}\nreplace_peers=true\n"
        f"public_key={H2}\nreplace_allowed_ips=true\nallowed_ip=10.0.0.2/32\n"
        f"public_key={H3}\nremove=true\n\n"
    ).encode()
    assert parse_requests(data) == [
        SetRequest(
            private_key=K1,
            replace_peers=True,
            peers=[
                PeerChange(
                    public_key=K2, replace_allowed_ips=True, allowed_ips_add=[net("10.0.0.2/32")]
                ),
                PeerChange(public_key=K3, remove=True),
            ],
        )
    ]


def test_zero_private_key_clears_and_absent_is_unset() -> None:
    (cleared,) = parse_requests(f"set=1\nprivate_key={ZERO}\n\n".encode())
    assert isinstance(cleared, SetRequest)
    assert cleared.private_key is None
    (untouched,) = parse_requests(b"set=1\nlisten_port=0\n\n")
    assert isinstance(untouched, SetRequest)
    assert untouched.private_key is UNSET
    assert untouched.listen_port == 0


def test_uppercase_hex_accepted_like_go() -> None:
    (req,) = parse_requests(f"set=1\nprivate_key={H1.upper()}\n\n".encode())
    assert isinstance(req, SetRequest)
    assert req.private_key == K1


def test_allowed_ip_last_mention_wins_and_host_bits_masked() -> None:
    data = (
        f"set=1\npublic_key={H2}\n"
        "allowed_ip=10.0.0.7/24\nallowed_ip=-10.0.0.0/24\n"  # added then removed -> remove
        "allowed_ip=-10.1.0.0/16\nallowed_ip=10.1.0.0/16\n"  # removed then added -> add
        "\n"
    ).encode()
    (req,) = parse_requests(data)
    assert isinstance(req, SetRequest)
    (peer,) = req.peers
    assert peer.allowed_ips_add == [net("10.1.0.0/16")]
    assert peer.allowed_ips_remove == [net("10.0.0.0/24")]


def test_replace_allowed_ips_discards_earlier_lines() -> None:
    data = (
        f"set=1\npublic_key={H2}\nallowed_ip=10.0.0.0/8\nallowed_ip=-10.2.0.0/16\n"
        "replace_allowed_ips=true\nallowed_ip=192.168.0.0/16\n\n"
    ).encode()
    (req,) = parse_requests(data)
    assert isinstance(req, SetRequest)
    assert req.peers == [
        PeerChange(public_key=K2, replace_allowed_ips=True, allowed_ips_add=[net("192.168.0.0/16")])
    ]


def test_remove_discards_other_fields_but_still_validates_them() -> None:
    ok = f"set=1\npublic_key={H2}\nendpoint=1.2.3.4:5\nremove=true\nallowed_ip=10.0.0.0/8\n\n"
    assert parse_requests(ok.encode()) == [
        SetRequest(peers=[PeerChange(public_key=K2, remove=True)])
    ]
    bad = f"set=1\npublic_key={H2}\nremove=true\nallowed_ip=nonsense\n\n"
    assert errnos(results(bad.encode())) == [(IPC_ERROR_INVALID, False)]


def test_same_peer_twice_gives_two_changes_in_order() -> None:
    data = f"set=1\npublic_key={H2}\nremove=true\npublic_key={H2}\nupdate_only=true\n\n"
    (req,) = parse_requests(data.encode())
    assert isinstance(req, SetRequest)
    assert req.peers == [PeerChange(K2, remove=True), PeerChange(K2, update_only=True)]


def test_protocol_version_and_crlf_lines() -> None:
    data = "set=1\r\nlisten_port=7\r\n\r\n"  # the op line must be exact
    assert errnos(results(data.encode())) == [(IPC_ERROR_PROTOCOL, True)]
    data = f"set=1\nlisten_port=7\r\npublic_key={H2}\r\nprotocol_version=1\r\n\r\n"
    assert parse_requests(data.encode()) == [
        SetRequest(listen_port=7, peers=[PeerChange(K2, protocol_version=1)])
    ]


def test_pipelined_requests_and_recovery_after_bad_request() -> None:
    data = b"get=1\n\nset=1\nbogus=1\nlisten_port=1\n\nset=1\nlisten_port=2\n\nget=1\n\n"
    assert errnos(results(data)) == [
        GetRequest(),
        (IPC_ERROR_INVALID, False),
        SetRequest(listen_port=2),
        GetRequest(),
    ]


def test_get_with_trailing_character_then_continues() -> None:
    # wireguard-go reads one byte after "get=1\n"; anything but "\n" is EINVAL.
    assert errnos(results(b"get=1\nxget=1\n\n")) == [(IPC_ERROR_INVALID, False), GetRequest()]


def test_eof_completes_a_set_like_wireguard_go() -> None:
    assert parse_requests(b"set=1\nlisten_port=5\nfwmark=9") == [
        SetRequest(listen_port=5, fwmark=9)
    ]
    assert parse_requests(b"set=1\n") == [SetRequest()]
    # A get cut short and a partial operation line produce nothing.
    assert results(b"get=1\n") == []
    assert results(b"get=") == []
    assert results(b"") == []


def test_no_result_until_request_complete() -> None:
    parser = UAPIParser()
    parser.feed(b"set=1\nlisten_port=5\n")
    assert parser.next_request() is None
    parser.feed(b"\n")
    assert parser.next_request() == SetRequest(listen_port=5)
    assert not parser.closed


def test_unknown_operation_is_fatal_and_parser_closes() -> None:
    parser = UAPIParser()
    parser.feed(b"hello\nget=1\n\n")
    with pytest.raises(UAPIError) as info:
        parser.next_request()
    assert info.value.errno == IPC_ERROR_PROTOCOL
    assert info.value.fatal
    assert parser.closed
    parser.feed(b"get=1\n\n")
    assert parser.next_request() is None


def test_unknown_operation_detected_without_newline() -> None:
    # Six bytes that are neither op prefix suffice: no buffering of an endless first line.
    assert errnos(results(b"GET=1\n" + b"x" * 10, eof=False)) == [(IPC_ERROR_PROTOCOL, True)]
    assert errnos(results(b"g" + b"e" * 100_000, eof=False)) == [(IPC_ERROR_PROTOCOL, True)]


@pytest.mark.parametrize(
    ("line", "code"),
    [
        ("nonsense", IPC_ERROR_PROTOCOL),
        ("private_key=" + H1[:-1], IPC_ERROR_INVALID),
        ("private_key=" + H1 + "0", IPC_ERROR_INVALID),
        ("private_key=" + "g" * 64, IPC_ERROR_INVALID),
        ("private_key= " + H1[1:], IPC_ERROR_INVALID),
        ("listen_port=65536", IPC_ERROR_INVALID),
        ("listen_port=-1", IPC_ERROR_INVALID),
        ("listen_port=+1", IPC_ERROR_INVALID),
        ("listen_port= 1", IPC_ERROR_INVALID),
        ("listen_port=", IPC_ERROR_INVALID),
        ("listen_port=1_0", IPC_ERROR_INVALID),
        ("listen_port=" + "9" * 5000, IPC_ERROR_INVALID),
        ("listen_port=\u0661", IPC_ERROR_INVALID),
        ("fwmark=4294967296", IPC_ERROR_INVALID),
        ("replace_peers=false", IPC_ERROR_INVALID),
        ("replace_peers=TRUE", IPC_ERROR_INVALID),
        ("preshared_key=" + H1, IPC_ERROR_INVALID),  # a peer key before any public_key
        ("public_key=" + H1[:60], IPC_ERROR_INVALID),
        ("=", IPC_ERROR_INVALID),
    ],
)
def test_bad_device_lines(line: str, code: int) -> None:
    data = f"set=1\n{line}\n\n".encode()
    assert errnos(results(data)) == [(code, False)]


@pytest.mark.parametrize(
    "line",
    [
        "private_key=" + ZERO,  # a device key inside a peer section
        "update_only=yes",
        "remove=1",
        "preshared_key=xyz",
        "persistent_keepalive_interval=65536",
        "replace_allowed_ips=false",
        "protocol_version=2",
        "protocol_version=01",
        "whatever=1",
        "endpoint=1.2.3.4",
        "endpoint=1.2.3.4:",
        "endpoint=:5",
        "endpoint=1.2.3.4:65536",
        "endpoint=01.2.3.4:5",
        "endpoint=[1.2.3.4]:5",
        "endpoint=::1:5",
        "endpoint=[::1:5",
        "endpoint=[::1]",
        "endpoint=[fe80::1%]:5",
        "endpoint=1.2.3.4%eth0:5",
        "endpoint=example.com:5",
        "endpoint=[::1]:5\xff",
        "allowed_ip=10.0.0.0",
        "allowed_ip=10.0.0.0/33",
        "allowed_ip=10.0.0.0/08",
        "allowed_ip=10.0.0.0/-1",
        "allowed_ip=10.0.0.0/+8",
        "allowed_ip=10.0.0.0/",
        "allowed_ip=::/129",
        "allowed_ip=fe80::%eth0/64",
        "allowed_ip=--10.0.0.0/8",
        "allowed_ip=10.0.0.0/8\xe9",
        "allowed_ip=10.0.0.0/\u0668",
    ],
)
def test_bad_peer_lines(line: str) -> None:
    data = f"set=1\npublic_key={H2}\n{line}\n\n".encode()
    assert errnos(results(data)) == [(IPC_ERROR_INVALID, False)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("192.0.2.1:0", ("192.0.2.1", 0)),
        ("[2001:DB8::1]:65535", ("2001:db8::1", 65535)),
        ("[fe80::1%wg0]:51820", ("fe80::1%wg0", 51820)),
        ("[::ffff:192.0.2.1]:1", ("::ffff:192.0.2.1", 1)),
        ("192.0.2.1:00080", ("192.0.2.1", 80)),
    ],
)
def test_endpoints(text: str, expected: tuple[str, int]) -> None:
    assert parse_endpoint(text) == expected
    assert parse_endpoint(format_endpoint(expected)) == expected


@pytest.mark.parametrize("prefix", ["0.0.0.0/0", "::/0", "10.0.0.0/32", "::1/128"])
def test_extreme_prefixes_accepted(prefix: str) -> None:
    (req,) = parse_requests(f"set=1\npublic_key={H2}\nallowed_ip={prefix}\n\n".encode())
    assert isinstance(req, SetRequest)
    assert req.peers[0].allowed_ips_add == [net(prefix)]


# ---- bounds ----------------------------------------------------------------------------------


def test_line_too_long_is_fatal_eio() -> None:
    ok = b"set=1\nlisten_port=" + b"0" * (MAX_LINE_SIZE - len("listen_port=") - 2) + b"1\n\n"
    assert parse_requests(ok) == [SetRequest(listen_port=1)]
    long_line = b"set=1\nlisten_port=" + b"0" * MAX_LINE_SIZE
    assert errnos(results(long_line, eof=False)) == [(IPC_ERROR_IO, True)]
    assert errnos(results(long_line + b"1\n\n")) == [(IPC_ERROR_IO, True)]


def test_request_size_and_line_limits() -> None:
    body = b"".join(b"allowed_ip=10.0.%d.0/24\n" % i for i in range(200))
    data = f"set=1\npublic_key={H2}\n".encode() + body + b"\n"
    assert errnos(results(data, max_request_lines=100)) == [(IPC_ERROR_IO, True)]
    assert errnos(results(data, max_request_size=2000)) == [(IPC_ERROR_IO, True)]
    (req,) = results(data, max_request_lines=202, max_request_size=len(data))
    assert isinstance(req, SetRequest)
    assert len(req.peers[0].allowed_ips_add) == 200


def test_feeding_byte_by_byte_does_not_rescan() -> None:
    # 60k bytes fed one at a time: quadratic rescanning would take minutes; this takes ~0.1 s.
    parser = UAPIParser()
    data = b"set=1\nlisten_port=" + b"0" * 60_000 + b"7\n\n"
    for i in range(len(data)):
        parser.feed(data[i : i + 1])
    assert parser.next_request() == SetRequest(listen_port=7)


# ---- answers (client side) --------------------------------------------------------------------


def test_parse_set_response() -> None:
    parse_set_response(b"errno=0\n\n")
    with pytest.raises(UAPIError) as info:
        parse_set_response(b"errno=-98\n\n")
    assert info.value.errno == -98
    with pytest.raises(UAPIError) as info:
        parse_set_response(b"errno=22\n\n")  # some daemons send the positive value
    assert info.value.errno == -22


@pytest.mark.parametrize(
    "data",
    [b"", b"\n\n", b"errno=0\n", b"errno=x\n\n", b"errno=0\n\nerrno=0\n\n", b"x\nerrno=0\n\n"],
)
def test_bad_answers_are_eproto(data: bytes) -> None:
    with pytest.raises(UAPIError) as info:
        parse_get_response(data)
    assert info.value.errno == IPC_ERROR_PROTOCOL


def test_get_answer_with_daemon_error_keeps_its_errno() -> None:
    with pytest.raises(UAPIError) as info:
        parse_get_response(b"errno=-22\n\n")
    assert info.value.errno == IPC_ERROR_INVALID


def test_get_answer_ignores_unknown_keys_and_rejects_bad_values() -> None:
    data = f"future_key=1\npublic_key={H2}\nshiny=yes\nerrno=0\n\n".encode()
    assert parse_get_response(data) == DeviceSnapshot(peers=[PeerSnapshot(public_key=K2)])
    with pytest.raises(UAPIError) as info:
        parse_get_response(f"public_key={H2}\ntx_bytes=-1\nerrno=0\n\n".encode())
    assert info.value.errno == IPC_ERROR_PROTOCOL


def test_uapi_error_requires_negative_errno() -> None:
    with pytest.raises(ValueError, match="negative"):
        UAPIError(22)


def test_private_keys_not_in_repr() -> None:
    assert K1.hex() not in repr(SetRequest(private_key=K1))
    assert repr(K1) not in repr(SetRequest(private_key=K1))
    assert repr(K3) not in repr(PeerChange(K2, preshared_key=K3))
    assert repr(K1) not in repr(DeviceSnapshot(private_key=K1))


# ---- property tests ----------------------------------------------------------------------------


def _drain(parser: UAPIParser) -> list[object]:
    out: list[object] = []
    while True:
        try:
            request = parser.next_request()
        except UAPIError as e:
            out.append((e.errno, e.fatal))
            continue
        if request is None:
            assert all(item[0] < 0 for item in out if isinstance(item, tuple))  # type: ignore[operator]
            return out
        out.append(request)


@given(st.binary(max_size=2048))
def test_parser_only_raises_uapi_error(data: bytes) -> None:
    for chunks in ([data], [data[i : i + 1] for i in range(len(data))]):  # whole, then byte by byte
        parser = UAPIParser()
        for chunk in chunks:
            parser.feed(chunk)
            _drain(parser)
        parser.feed_eof()
        _drain(parser)


_VOCAB = [
    "get=1",
    "set=1",
    "",
    f"private_key={H1}",
    f"private_key={ZERO}",
    "listen_port=51820",
    "fwmark=0",
    "replace_peers=true",
    f"public_key={H2}",
    f"public_key={H3}",
    "update_only=true",
    "remove=true",
    f"preshared_key={H3}",
    "endpoint=192.0.2.1:1",
    "endpoint=[fe80::1%x]:2",
    "persistent_keepalive_interval=25",
    "replace_allowed_ips=true",
    "allowed_ip=10.0.0.0/8",
    "allowed_ip=-10.0.0.0/8",
    "allowed_ip=::/0",
    "protocol_version=1",
    "bogus",
    "x=y",
]


@given(st.lists(st.sampled_from(_VOCAB), max_size=40), st.lists(st.integers(1, 50), max_size=40))
def test_structured_input_same_result_for_any_chunking(lines: list[str], cuts: list[int]) -> None:
    data = "".join(line + "\n" for line in lines).encode()
    whole = UAPIParser()
    whole.feed(data)
    whole.feed_eof()
    expected = _drain(whole)
    chunked = UAPIParser()
    pos = 0
    got: list[object] = []
    for cut in [*cuts, len(data)]:
        chunked.feed(data[pos : pos + cut])
        got.extend(_drain(chunked))
        pos += cut
    chunked.feed(data[pos:])
    chunked.feed_eof()
    got.extend(_drain(chunked))
    assert got == expected


@given(st.binary(max_size=1024))
def test_answer_parsers_only_raise_uapi_error(data: bytes) -> None:
    with contextlib.suppress(UAPIError):
        parse_get_response(data)
    with contextlib.suppress(UAPIError):
        parse_set_response(data)
    with contextlib.suppress(UAPIError):
        parse_get_response(data + b"\nerrno=0\n\n")


keys = st.binary(min_size=32, max_size=32)
nonzero_keys = keys.filter(lambda k: any(k))
ipv4 = st.ip_addresses(v=4)
ipv6 = st.ip_addresses(v=6)


@st.composite
def endpoints(draw: st.DrawFn) -> tuple[str, int]:
    addr = draw(st.one_of(ipv4, ipv6))
    port = draw(st.integers(0, 65535))
    scope = draw(st.sampled_from(["", "%eth0", "%7"])) if addr.version == 6 else ""
    # Canonicalise through the parser itself, so the strategy covers IPv4-mapped text too.
    return parse_endpoint(format_endpoint((f"{addr}{scope}", port)))


@st.composite
def networks(draw: st.DrawFn) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    addr = draw(st.one_of(ipv4, ipv6))
    bits = draw(st.integers(0, addr.max_prefixlen))
    return ipaddress.ip_network((addr, bits), strict=False)


@st.composite
def peer_changes(draw: st.DrawFn) -> PeerChange:
    public_key = draw(keys)
    if draw(st.booleans()):
        return PeerChange(public_key, remove=True)
    prefixes = draw(st.lists(networks(), max_size=6, unique=True))
    split = draw(st.integers(0, len(prefixes)))
    return PeerChange(
        public_key=public_key,
        update_only=draw(st.booleans()),
        preshared_key=draw(st.none() | keys),
        endpoint=draw(st.none() | endpoints()),
        persistent_keepalive_interval=draw(st.none() | st.integers(0, 65535)),
        replace_allowed_ips=draw(st.booleans()),
        allowed_ips_add=prefixes[:split],
        allowed_ips_remove=prefixes[split:],
        protocol_version=draw(st.sampled_from([None, 1])),
    )


set_requests = st.builds(
    SetRequest,
    private_key=st.sampled_from([UNSET, None]) | nonzero_keys,
    listen_port=st.none() | st.integers(0, 65535),
    fwmark=st.none() | st.integers(0, 2**32 - 1),
    replace_peers=st.booleans(),
    peers=st.lists(peer_changes(), max_size=4),
)


@pytest.mark.slow
@given(st.lists(set_requests | st.just(GetRequest()), max_size=4))
def test_request_round_trip(requests: list[Request]) -> None:
    data = b"".join(format_request(r) for r in requests)
    assert parse_requests(data) == requests


peer_snapshots = st.builds(
    PeerSnapshot,
    public_key=keys,
    preshared_key=st.none() | nonzero_keys,
    endpoint=st.none() | endpoints(),
    last_handshake_time_ns=st.integers(0, 2**62),
    tx_bytes=st.integers(0, 2**64 - 1),
    rx_bytes=st.integers(0, 2**64 - 1),
    persistent_keepalive_interval=st.integers(0, 65535),
    allowed_ips=st.lists(networks(), max_size=5),
)


@pytest.mark.slow
@given(
    st.builds(
        DeviceSnapshot,
        private_key=st.none() | nonzero_keys,
        listen_port=st.integers(0, 65535),
        fwmark=st.integers(0, 2**32 - 1),
        peers=st.lists(peer_snapshots, max_size=4),
    )
)
def test_get_round_trip(snapshot: DeviceSnapshot) -> None:
    text = format_get(snapshot)
    assert text.endswith(b"\nerrno=0\n\n") or text == b"errno=0\n\n"
    assert parse_get_response(text) == snapshot


@pytest.mark.slow
def test_large_get_answer_beyond_request_limit() -> None:
    # Answers are bounded by MAX_ANSWER_SIZE, not by the (smaller) set request limit.
    peers = [
        PeerSnapshot(
            public_key=i.to_bytes(32, "big"), allowed_ips=[net(f"10.{i >> 8}.{i & 255}.0/24")]
        )
        for i in range(16000)
    ]
    text = format_get(DeviceSnapshot(peers=peers))
    assert len(text) > MAX_REQUEST_SIZE
    assert parse_get_response(text).peers == peers
