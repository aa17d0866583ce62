"""ClientSession state machine: every state against unexpected frames, and info boxes."""

from __future__ import annotations

import contextlib
import ipaddress
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshscale.derp import frames as F
from meshscale.derp.client import ClientSession, ClientState, Connected
from meshscale.derp.errors import HandshakeError, LocalDERPError, RemoteDERPError
from meshscale.derp.info import (
    ClientInfo,
    ServerInfo,
    open_client_info,
    open_sealed,
    open_server_info,
    seal,
)
from meshscale.derp.relay import Relay
from meshscale.key import NodePrivate, NodePublic

CLIENT = NodePrivate.generate(b"\x01" * 32)
SERVER = NodePrivate.generate(b"\x02" * 32)


def logged_in() -> tuple[ClientSession, Relay]:
    relay = Relay(SERVER)
    s = ClientSession(CLIENT, random.Random(0).randbytes)
    s.receive_data(relay.server_key_frame())
    s.data_to_send()
    s.receive_data(relay.server_info_frame(CLIENT.public_raw(), bytes(24)))
    assert isinstance(s.next_event(), Connected)
    return s, relay


@pytest.mark.parametrize(
    "frame",
    [F.keep_alive(), F.recv_packet(bytes(32), b"x"), F.encode(F.FrameType.SERVER_INFO, bytes(40))],
)
def test_await_server_key_rejects_anything_else(frame: bytes) -> None:
    s = ClientSession(CLIENT, random.Random(0).randbytes)
    with pytest.raises(HandshakeError):
        s.receive_data(frame)
    assert s.state is ClientState.CLOSED
    s.receive_data(F.keep_alive())  # a dead session ignores further input
    with pytest.raises(LocalDERPError):
        s.send_packet(bytes(32), b"x")


def test_await_server_info_rejects_other_frames_and_second_server_key() -> None:
    relay = Relay(SERVER)
    s = ClientSession(CLIENT, random.Random(0).randbytes)
    s.receive_data(relay.server_key_frame())
    with pytest.raises(HandshakeError):
        s.receive_data(F.recv_packet(bytes(32), b"early"))
    s = ClientSession(CLIENT, random.Random(0).randbytes)
    s.receive_data(relay.server_key_frame())
    with pytest.raises(HandshakeError):
        s.receive_data(relay.server_key_frame())


def test_connected_events_and_ignored_frames() -> None:
    s, _relay = logged_in()
    s.receive_data(
        F.keep_alive()
        + F.encode(0x0C, b"future frame")
        + F.send_packet(bytes(32), b"server-only frame")
        + F.health("region problem")
        + F.restarting(10, 20)
        + F.peer_present(bytes(32), None, 1)
        + F.server_key(SERVER.public_raw())[:5]  # a partial frame stays buffered
    )
    evs = list(iter(s.next_event, None))
    assert evs == [
        F.Health("region problem"),
        F.Restarting(10, 20),
        F.PeerPresent(bytes(32), (ipaddress.IPv6Address("::"), 0), 1),
    ]
    assert s.connected


def test_second_server_info_is_an_error() -> None:
    s, relay = logged_in()
    with pytest.raises(HandshakeError):
        s.receive_data(relay.server_info_frame(CLIENT.public_raw(), bytes(24)))


def test_user_calls_encode_frames() -> None:
    s, _ = logged_in()
    s.note_preferred(True)
    s.close_peer(NodePublic(bytes(32)))
    s.forward_packet(bytes(32), b"\x01" * 32, b"pkt")
    s.watch_conns()
    assert s.data_to_send() == (
        F.note_preferred(True)
        + F.close_peer(bytes(32))
        + F.forward_packet(bytes(32), b"\x01" * 32, b"pkt")
        + F.watch_conns()
    )
    s.close()
    assert not s.connected


def test_info_json_optional_fields_roundtrip() -> None:
    ci = ClientInfo(mesh_key="ab" * 32, is_prober=True, app_name="probe")
    assert ClientInfo.from_json(ci.to_json()) == ci
    si = ServerInfo(token_bucket_bytes_per_second=1000, token_bucket_bytes_burst=2000)
    assert ServerInfo.from_json(si.to_json()) == si
    assert ServerInfo.from_json(b'{"version":null}') == ServerInfo(version=0)
    for bad in (b"{", b"[" * 100_000, b'{"version":true}'):
        with pytest.raises(HandshakeError):
            ClientInfo.from_json(bad)


def test_box_errors() -> None:
    with pytest.raises(LocalDERPError):
        seal(CLIENT, SERVER.public_raw(), b"x", b"short nonce")
    with pytest.raises(HandshakeError):
        open_sealed(SERVER, CLIENT.public_raw(), bytes(30))
    with pytest.raises(HandshakeError):
        open_client_info(SERVER, b"short", bytes(64))
    with pytest.raises(HandshakeError):
        open_server_info(CLIENT, SERVER.public_raw(), bytes(24 + (1 << 20) + 1))
    with pytest.raises(HandshakeError):
        seal(CLIENT, b"bad key", b"x", bytes(24))


@given(st.binary(max_size=600))
def test_relay_open_client_info_only_raises_derp_errors(payload: bytes) -> None:
    relay = Relay(SERVER)
    with contextlib.suppress(RemoteDERPError):
        relay.open_client_info(payload)


@pytest.mark.slow
@given(st.binary(max_size=2000))
def test_session_on_garbage_only_raises_remote_errors(data: bytes) -> None:
    """Whole, then byte by byte, after login: only RemoteDERPError, never anything else."""
    for chunks in ([data], [data[i : i + 1] for i in range(len(data))]):
        s, _ = logged_in()
        with contextlib.suppress(RemoteDERPError):
            for c in chunks:
                s.receive_data(c)
        while s.next_event() is not None:
            pass


@pytest.mark.slow
@given(
    st.lists(
        st.tuples(st.integers(0, 0x20), st.binary(max_size=120)),
        max_size=12,
    )
)
def test_session_on_random_frames_only_raises_remote_errors(items: list[tuple[int, bytes]]) -> None:
    s, _ = logged_in()
    with contextlib.suppress(RemoteDERPError):
        s.receive_data(b"".join(F.encode(t, p) for t, p in items))
