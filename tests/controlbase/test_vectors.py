"""Replay handshake vectors produced by an independent Noise implementation
(vectors/ik_noiseprotocol.json; its header says how they were made)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from meshscale.controlbase import ClientConn, ClientHandshake, Conn, server_accept
from meshscale.key import MachinePrivate

VECTORS = json.loads((Path(__file__).parent / "vectors" / "ik_noiseprotocol.json").read_text())


@pytest.mark.parametrize("case", VECTORS["cases"], ids=lambda c: f"v{c['version']}")
def test_vector(case: dict[str, object]) -> None:
    def b(name: str) -> bytes:
        return bytes.fromhex(str(case[name]))

    client = MachinePrivate(b("client_static"))
    server = MachinePrivate(b("server_static"))
    version = int(case["version"])  # type: ignore[call-overload]
    hs = ClientHandshake(client, server.public(), version, b("client_ephemeral"))
    assert hs.initiation == b("initiation")
    resp, peer, got_version, (tx, rx) = server_accept(
        b("initiation"), server, b("server_ephemeral")
    )
    assert resp == b("response")
    assert peer == client.public()
    assert got_version == version
    cc = ClientConn(hs, server.public())
    assert cc.receive_data(resp) == b""
    assert cc.conn is not None
    assert cc.conn.send(b("record_0_plaintext")) == b("record_0")
    assert Conn(tx, rx, peer, version).receive_data(b("record_0")) == b("record_0_plaintext")
