"""Interop with an independent Noise implementation (the `noiseprotocol` package).

Both directions: our initiator against its responder, its initiator against our responder.
Only the first transport record is compared through the library, because it encodes the
nonce little-endian and ts2021 uses big-endian (docs/protocol/control.md §2.4); from the second
record on the two must differ, which the last test pins down.
"""

from __future__ import annotations

import struct

import pytest

from meshscale.controlbase import ClientConn, ClientHandshake, Conn, RecordError, server_accept
from meshscale.controlbase.handshake import PROTOCOL_NAME, prologue
from meshscale.key import MachinePrivate

noise_connection = pytest.importorskip("noise.connection")
NoiseConnection = noise_connection.NoiseConnection
Keypair = noise_connection.Keypair

pytestmark = pytest.mark.interop

SERVER = MachinePrivate(bytes([1]) * 32)
CLIENT = MachinePrivate(bytes([2]) * 32)


def _noise(initiator: bool, version: int) -> object:
    n = NoiseConnection.from_name(PROTOCOL_NAME)
    if initiator:
        n.set_as_initiator()
        n.set_keypair_from_private_bytes(Keypair.STATIC, CLIENT.raw)
        n.set_keypair_from_public_bytes(Keypair.REMOTE_STATIC, SERVER.public_raw())
    else:
        n.set_as_responder()
        n.set_keypair_from_private_bytes(Keypair.STATIC, SERVER.raw)
    n.set_prologue(prologue(version))
    n.start_handshake()
    return n


def test_our_client_their_server() -> None:
    hs = ClientHandshake(CLIENT, SERVER.public(), 130, bytes([3]) * 32)
    cc = ClientConn(hs, SERVER.public())
    srv = _noise(False, 130)
    assert srv.read_message(hs.initiation[5:]) == b""  # type: ignore[attr-defined]
    resp = srv.write_message(b"")  # type: ignore[attr-defined]
    assert len(resp) == 48
    cc.receive_data(b"\x02\x00\x30" + resp)
    assert cc.conn is not None
    ct = cc.conn.send(b"first record")[3:]
    assert srv.decrypt(ct) == b"first record"  # type: ignore[attr-defined]
    reply = srv.encrypt(b"reply")  # type: ignore[attr-defined]
    assert cc.receive_data(struct.pack(">BH", 4, len(reply)) + reply) == b"reply"


def test_their_client_our_server() -> None:
    cli = _noise(True, 131)
    msg = cli.write_message(b"")  # type: ignore[attr-defined]
    assert len(msg) == 96
    init = struct.pack(">HBH", 131, 1, 96) + msg
    resp, peer, version, (tx, rx) = server_accept(init, SERVER, bytes([4]) * 32)
    assert peer == CLIENT.public()
    assert version == 131
    cli.read_message(resp[3:])  # type: ignore[attr-defined]
    assert cli.handshake_finished  # type: ignore[attr-defined]
    server = Conn(tx, rx, peer, version)
    ct = cli.encrypt(b"hello")  # type: ignore[attr-defined]
    assert server.receive_data(struct.pack(">BH", 4, len(ct)) + ct) == b"hello"
    assert cli.decrypt(server.send(b"welcome")[3:]) == b"welcome"  # type: ignore[attr-defined]


def test_second_record_differs_from_little_endian_noise() -> None:
    cli = _noise(True, 130)
    init = struct.pack(">HBH", 130, 1, 96) + cli.write_message(b"")  # type: ignore[attr-defined]
    resp, peer, version, (tx, rx) = server_accept(init, SERVER, bytes([4]) * 32)
    cli.read_message(resp[3:])  # type: ignore[attr-defined]
    server = Conn(tx, rx, peer, version)
    for i in range(2):
        ct = cli.encrypt(b"r%d" % i)  # type: ignore[attr-defined]
        frame = struct.pack(">BH", 4, len(ct)) + ct
        if i == 0:
            assert server.receive_data(frame) == b"r0"
        else:
            with pytest.raises(RecordError):
                server.receive_data(frame)
