"""controlbase: handshake pair, record layer, framing limits, fuzzed parsers."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshscale.controlbase import (
    INITIATION_LEN,
    MAX_MESSAGE_SIZE,
    MAX_PLAINTEXT_SIZE,
    RESPONSE_LEN,
    CipherState,
    ClientConn,
    ClientHandshake,
    Conn,
    ControlBaseError,
    EarlyPayloadReader,
    FrameBuffer,
    HandshakeError,
    LocalProtocolError,
    ParseError,
    RecordError,
    encode_early_payload,
    encode_error,
    parse_initiation,
    server_accept,
)
from meshscale.key import MachinePrivate

SERVER = MachinePrivate(bytes(range(32)))
CLIENT = MachinePrivate(bytes(range(32, 64)))
E_CLIENT = bytes([7]) * 32
E_SERVER = bytes([9]) * 32


def pair(version: int = 130) -> tuple[Conn, Conn]:
    hs = ClientHandshake(CLIENT, SERVER.public(), version, E_CLIENT)
    cc = ClientConn(hs, SERVER.public())
    resp, peer, got_version, (tx, rx) = server_accept(cc.initiation, SERVER, E_SERVER)
    assert peer == CLIENT.public()
    assert got_version == version
    assert cc.receive_data(resp) == b""
    assert cc.conn is not None
    return cc.conn, Conn(tx, rx, peer, got_version)


def test_message_sizes() -> None:
    hs = ClientHandshake(CLIENT, SERVER.public(), 130, E_CLIENT)
    assert len(hs.initiation) == INITIATION_LEN == 101
    assert hs.initiation[:5] == struct.pack(">HBH", 130, 1, 96)
    resp, *_ = server_accept(hs.initiation, SERVER, E_SERVER)
    assert len(resp) == RESPONSE_LEN == 51
    assert resp[:3] == b"\x02\x00\x30"


def test_deterministic_given_randomness() -> None:
    """Same keys and ephemerals give identical bytes (randomness is an input)."""
    a = ClientHandshake(CLIENT, SERVER.public(), 130, E_CLIENT).initiation
    b = ClientHandshake(CLIENT, SERVER.public(), 130, E_CLIENT).initiation
    assert a == b
    c = ClientHandshake(CLIENT, SERVER.public(), 131, E_CLIENT).initiation
    assert a[5:37] == c[5:37]  # same ephemeral
    assert a[37:] != c[37:]  # prologue differs with the version


def test_pair_roundtrip_both_directions() -> None:
    client, server = pair()
    for i in range(5):  # several records: the big-endian counter matters from record 2
        msg = b"hello %d" % i
        assert server.receive_data(client.send(msg)) == msg
        assert client.receive_data(server.send(msg * 3)) == msg * 3


def test_large_write_is_chunked_at_4077() -> None:
    client, server = pair()
    data = bytes(range(256)) * 40  # 10240 bytes
    wire = client.send(data)
    assert client.records_sent == 3
    first_len = struct.unpack(">H", wire[1:3])[0]
    assert first_len == MAX_PLAINTEXT_SIZE + 16
    assert 3 + first_len == MAX_MESSAGE_SIZE
    out = b"".join(server.receive_data(wire[i : i + 7]) for i in range(0, len(wire), 7))
    assert out == data


def test_nonce_is_big_endian() -> None:
    """Record n uses nonce 0000 || u64be(n); a little-endian reader fails from record 2."""
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

    hs = ClientHandshake(CLIENT, SERVER.public(), 130, E_CLIENT)
    _, _, _, (_srv_tx, srv_rx) = server_accept(hs.initiation, SERVER, E_SERVER)
    cs = CipherState(srv_rx)
    cs.encrypt(b"a")
    ct = cs.encrypt(b"second")
    nonce = b"\x00" * 4 + (1).to_bytes(8, "big")
    assert ChaCha20Poly1305(srv_rx).decrypt(nonce, ct, None) == b"second"


def test_wrong_server_key_fails() -> None:
    other = MachinePrivate(bytes([5]) * 32)
    hs = ClientHandshake(CLIENT, other.public(), 130, E_CLIENT)
    with pytest.raises(HandshakeError):
        server_accept(hs.initiation, SERVER, E_SERVER)


def test_tampered_response_fails() -> None:
    hs = ClientHandshake(CLIENT, SERVER.public(), 130, E_CLIENT)
    resp, *_ = server_accept(hs.initiation, SERVER, E_SERVER)
    bad = resp[:-1] + bytes([resp[-1] ^ 1])
    with pytest.raises(HandshakeError):
        hs.receive_response(bad)


def test_error_frame_reported() -> None:
    cc = ClientConn(ClientHandshake(CLIENT, SERVER.public(), 130, E_CLIENT), SERVER.public())
    frame = encode_error("go away")
    assert cc.receive_data(frame[:4]) == b""
    with pytest.raises(HandshakeError, match="go away"):
        cc.receive_data(frame[4:])


def test_handshake_response_split_and_leftover_records() -> None:
    hs = ClientHandshake(CLIENT, SERVER.public(), 130, E_CLIENT)
    cc = ClientConn(hs, SERVER.public())
    resp, peer, v, (tx, rx) = server_accept(cc.initiation, SERVER, E_SERVER)
    server = Conn(tx, rx, peer, v)
    wire = resp + server.send(b"early") + server.send(b"more")
    out = b"".join(cc.receive_data(wire[i : i + 1]) for i in range(len(wire)))
    assert out == b"earlymore"


def test_tampered_record_is_fatal() -> None:
    client, server = pair()
    wire = bytearray(client.send(b"x" * 20))
    wire[10] ^= 0x80
    with pytest.raises(RecordError):
        server.receive_data(bytes(wire))


def test_oversize_frame_rejected() -> None:
    _client, server = pair()
    with pytest.raises(ParseError):
        server.receive_data(b"\x04\x10\x00")  # 3 + 4096 > 4096


def test_non_record_after_handshake_rejected() -> None:
    _, server = pair()
    with pytest.raises(ParseError):
        server.receive_data(b"\x02\x00\x00")


def test_cipher_exhausted() -> None:
    cs = CipherState(bytes(32))
    cs._n = 2**64 - 1
    with pytest.raises(LocalProtocolError):
        cs.encrypt(b"x")


@pytest.mark.parametrize(
    "mutate",
    [
        lambda b: b[:-1],
        lambda b: b + b"\x00",
        lambda b: b[:2] + b"\x02" + b[3:],
        lambda b: b[:3] + b"\x00\x5f" + b[5:],
    ],
)
def test_bad_initiation_shapes(mutate) -> None:
    init = ClientHandshake(CLIENT, SERVER.public(), 130, E_CLIENT).initiation
    with pytest.raises(ParseError):
        parse_initiation(mutate(init))


def test_early_payload_roundtrip() -> None:
    body = b'{"nodeKeyChallenge":"chalpub:00"}'
    h2 = b"PRI * HTTP/2.0\r\n"
    r = EarlyPayloadReader()
    wire = encode_early_payload(body) + h2
    out = b"".join(r.feed(wire[i : i + 1]) for i in range(len(wire)))
    assert r.payload == body
    assert out == h2


def test_no_early_payload_passes_through() -> None:
    r = EarlyPayloadReader()
    assert r.feed(b"PRI * HT") == b""
    assert r.feed(b"TP/2.0") == b"PRI * HTTP/2.0"
    assert r.payload is None
    assert r.feed(b"x") == b"x"


def test_early_payload_too_large() -> None:
    r = EarlyPayloadReader()
    with pytest.raises(ParseError):
        r.feed(b"\xff\xff\xffTS" + struct.pack(">I", (10 << 20) + 1))


@pytest.mark.slow
@given(st.binary(max_size=300))
def test_frame_buffer_only_raises_parse_error(data: bytes) -> None:
    for chunks in ([data], [data[i : i + 1] for i in range(len(data))]):
        fb = FrameBuffer()
        with contextlib.suppress(ParseError):
            for c in chunks:
                fb.feed(c)
                while fb.next_frame() is not None:
                    pass


@pytest.mark.slow
@given(st.binary(max_size=200))
def test_server_accept_only_raises_controlbase_errors(data: bytes) -> None:
    with contextlib.suppress(ControlBaseError):
        server_accept(data, SERVER, E_SERVER)


@pytest.mark.slow
@given(st.binary(min_size=0, max_size=200))
def test_client_conn_only_raises_controlbase_errors(data: bytes) -> None:
    cc = ClientConn(ClientHandshake(CLIENT, SERVER.public(), 130, E_CLIENT), SERVER.public())
    with contextlib.suppress(ControlBaseError):
        cc.receive_data(data)


@pytest.mark.slow
@given(st.binary(max_size=600))
def test_conn_receive_only_raises_controlbase_errors(data: bytes) -> None:
    _, server = pair()
    with contextlib.suppress(ControlBaseError):
        server.receive_data(data)


def test_low_order_ephemeral_is_refused() -> None:
    init = bytearray(ClientHandshake(CLIENT, SERVER.public(), 130, E_CLIENT).initiation)
    init[5:37] = bytes(32)  # the all-zero point: X25519 gives the all-zero secret
    with pytest.raises(HandshakeError, match="low-order"):
        server_accept(bytes(init), SERVER, E_SERVER)


def test_local_misuse() -> None:
    with pytest.raises(LocalProtocolError):
        ClientHandshake(CLIENT, SERVER.public(), 1 << 16, E_CLIENT)
    hs = ClientHandshake(CLIENT, SERVER.public(), 130, E_CLIENT)
    resp, *_ = server_accept(hs.initiation, SERVER, E_SERVER)
    hs.receive_response(resp)
    with pytest.raises(LocalProtocolError):
        hs.receive_response(resp)
    from meshscale.controlbase.messages import encode_record_header

    with pytest.raises(LocalProtocolError):
        encode_record_header(4094)


@pytest.mark.parametrize(
    "frame",
    [b"\x02\x00", b"\x04\x00\x30" + bytes(48), b"\x02\x00\x2f" + bytes(47), b"\x02\x00\x30"],
)
def test_bad_response_frames(frame: bytes) -> None:
    from meshscale.controlbase import parse_response

    with pytest.raises(ParseError):
        parse_response(frame)
