"""The UAPI socket server against a fake backend: real UNIX sockets in a temporary directory."""

from __future__ import annotations

import asyncio
import os
import random
import socket
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshscale.wgdev.uapi_server import (
    UAPISocketInUseError,
    configure_device,
    listener_from_fd,
    open_uapi_listener,
    query_device,
    socket_path,
)
from meshscale.wireguard.uapi import (
    IPC_ERROR_INVALID,
    IPC_ERROR_PROTOCOL,
    IPC_ERROR_UNKNOWN,
    DeviceSnapshot,
    PeerChange,
    SetRequest,
    UAPIError,
)
from meshscale.wireguard.uapi_client import parse_get_response

from .conftest import ANSWER_TIMEOUT, RunningServer
from .fakes import FakeBackend, FakePeer, net

K1, K2 = bytes(range(32)), bytes(range(32, 64))
_OPEN: list[Client] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _OPEN:
        _OPEN.pop().close()


class Client:
    """A raw UAPI client that splits the byte stream into answers (each ends in an empty line)."""

    def __init__(self, path: str | None) -> None:
        assert path is not None
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(ANSWER_TIMEOUT)
        _OPEN.append(self)
        self.sock.connect(path)
        self.buf = b""

    def send(self, data: bytes) -> Client:
        self.sock.sendall(data)
        return self

    def answers(self, count: int) -> list[bytes]:
        out: list[bytes] = []
        while len(out) < count:
            end = self.buf.find(b"\n\n")
            if end >= 0:
                out.append(self.buf[: end + 2])
                self.buf = self.buf[end + 2 :]
                continue
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise AssertionError(f"server closed after {self.buf!r}")
            self.buf += chunk
        return out

    def rest_until_eof(self) -> bytes:
        """Everything until the server closes (fails on timeout: the server must close)."""
        data = self.buf
        while chunk := self.sock.recv(65536):
            data += chunk
        self.buf = b""
        return data

    def close(self) -> None:
        self.sock.close()


def test_get_empty_device(running: RunningServer) -> None:
    assert Client(running.path).send(b"get=1\n\n").answers(1) == [b"errno=0\n\n"]


def test_set_then_get_exact_text(running: RunningServer, backend: FakeBackend) -> None:
    c = Client(running.path)
    c.send(
        f"set=1\nlisten_port=51820\npublic_key={K2.hex()}\nendpoint=192.0.2.1:9\n"
        "allowed_ip=10.0.0.2/32\n\n".encode()
    )
    assert c.answers(1) == [b"errno=0\n\n"]
    assert backend.listen_port == 51820
    c.send(b"get=1\n\n")
    assert c.answers(1) == [
        (
            "listen_port=51820\n"
            f"public_key={K2.hex()}\npreshared_key={'00' * 32}\nprotocol_version=1\n"
            "endpoint=192.0.2.1:9\nlast_handshake_time_sec=0\nlast_handshake_time_nsec=0\n"
            "tx_bytes=0\nrx_bytes=0\npersistent_keepalive_interval=0\n"
            "allowed_ip=10.0.0.2/32\nerrno=0\n\n"
        ).encode()
    ]


def test_many_requests_pipelined_on_one_connection(running: RunningServer) -> None:
    c = Client(running.path)
    c.send(b"get=1\n\nset=1\nfwmark=7\n\nget=1\n\n" * 20)
    got = c.answers(60)
    assert got[:3] == [b"errno=0\n\n", b"errno=0\n\n", b"fwmark=7\nerrno=0\n\n"]
    assert running.server.statistics().requests == 60


def test_backend_errno_is_answered_and_connection_continues(
    running: RunningServer, backend: FakeBackend
) -> None:
    c = Client(running.path)
    assert c.send(b"set=1\nlisten_port=1\n\n").answers(1) == [b"errno=-98\n\n"]
    backend.fail_next = RuntimeError("engine bug")
    assert c.send(b"get=1\n\n").answers(1) == [b"errno=%d\n\n" % IPC_ERROR_UNKNOWN]
    assert c.send(b"set=1\nlisten_port=2\n\n").answers(1) == [b"errno=0\n\n"]
    stats = running.server.statistics()
    assert (stats.requests, stats.errors) == (1, 2)


def test_malformed_set_answers_errno_and_connection_continues(
    running: RunningServer, backend: FakeBackend
) -> None:
    c = Client(running.path)
    c.send(b"set=1\nlisten_port=3\nnonsense\n\nset=1\nlisten_port=99999\n\nget=1\n\n")
    assert c.answers(3) == [
        b"errno=%d\n\n" % IPC_ERROR_PROTOCOL,
        b"errno=%d\n\n" % IPC_ERROR_INVALID,
        b"errno=0\n\n",
    ]
    assert backend.sets == []  # a bad request changes nothing
    assert running.server.statistics().errors == 2


def test_unknown_operation_gets_errno_then_close(running: RunningServer) -> None:
    c = Client(running.path)
    assert c.send(b"hello\nget=1\n\n").rest_until_eof() == b"errno=%d\n\n" % IPC_ERROR_PROTOCOL
    # The server keeps serving other clients.
    assert Client(running.path).send(b"get=1\n\n").answers(1) == [b"errno=0\n\n"]


def test_truncated_set_completed_by_eof_like_wireguard_go(
    running: RunningServer, backend: FakeBackend
) -> None:
    c = Client(running.path)
    c.send(b"set=1\nfwmark=5")
    c.sock.shutdown(socket.SHUT_WR)
    assert c.rest_until_eof() == b"errno=0\n\n"
    assert backend.fwmark == 5


@pytest.mark.parametrize(
    ("cut", "expected"),
    [
        (1, b""),  # partial operation line: close without an answer, as wireguard-go
        (6, b""),  # "get=1\n" then EOF: wireguard-go's ReadByte fails, close
        (7, b"errno=0\n\n"),
        (13, b"errno=0\n\nerrno=0\n\n"),  # "set=1\n" then EOF: an empty set
        (20, b"errno=0\n\nerrno=%d\n\n" % IPC_ERROR_PROTOCOL),  # "public" then EOF
        (25, b"errno=0\n\nerrno=%d\n\n" % IPC_ERROR_INVALID),  # "public_key=0" then EOF
    ],
)
def test_truncated_requests_then_close(
    running: RunningServer, backend: FakeBackend, cut: int, expected: bytes
) -> None:
    request = f"get=1\n\nset=1\npublic_key={K1.hex()}\n".encode()[:cut]
    c = Client(running.path)
    c.send(request)
    c.sock.shutdown(socket.SHUT_WR)
    assert c.rest_until_eof() == expected
    assert backend.peers == {}
    assert Client(running.path).send(b"get=1\n\n").answers(1) == [b"errno=0\n\n"]


def test_probe_connection_without_data(running: RunningServer) -> None:
    # wg(8) lists interfaces by connecting and closing at once.
    for _ in range(5):
        Client(running.path).close()
    assert Client(running.path).send(b"get=1\n\n").answers(1) == [b"errno=0\n\n"]
    assert running.server.statistics().errors == 0


def test_random_bytes_never_break_the_server(running: RunningServer) -> None:
    rng = random.Random(4242)
    vocabulary = [b"get=1\n", b"set=1\n", b"\n", b"listen_port=5\n", b"x=y\n", b"=", b"\r"]
    for _ in range(60):
        if rng.random() < 0.5:
            data = rng.randbytes(rng.randrange(1, 300))
        else:
            data = b"".join(rng.choice(vocabulary) for _ in range(rng.randrange(1, 12)))
        c = Client(running.path)
        c.send(data)
        c.sock.shutdown(socket.SHUT_WR)
        reply = c.rest_until_eof()  # an answer per complete request, then a close; never a hang
        assert reply == b"" or reply.endswith(b"\n\n")
        c.close()
        assert Client(running.path).send(b"get=1\n\n").answers(1)[0].endswith(b"errno=0\n\n")


def test_too_many_connections_newest_closed(backend: FakeBackend, sock_dir: Path) -> None:
    srv = RunningServer(backend, open_uapi_listener("wgt1", str(sock_dir)), max_connections=3)
    try:
        idle = [Client(srv.path) for _ in range(3)]
        for c in idle:  # make sure the three are accepted before the fourth
            assert c.send(b"get=1\n\n").answers(1) == [b"errno=0\n\n"]
        extra = Client(srv.path)
        assert extra.rest_until_eof() == b""
        assert srv.server.statistics().rejected == 1
        idle[0].close()
        deadline = time.monotonic() + ANSWER_TIMEOUT
        while srv.server.statistics().connections < 5 and time.monotonic() < deadline:
            c = Client(srv.path)
            c.send(b"get=1\n\n")
            try:
                if c.answers(1) == [b"errno=0\n\n"]:
                    break
            except AssertionError:
                time.sleep(0.01)  # the first close may not have been noticed yet
        else:
            pytest.fail("a slot never freed up")
    finally:
        srv.stop()


def test_socket_file_mode_and_directory(running: RunningServer, sock_dir: Path) -> None:
    assert running.path == str(sock_dir / "wgt0.sock")
    st = os.stat(running.path)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) & 0o077 == 0  # bound under umask 077
    assert stat.S_IMODE(os.stat(sock_dir).st_mode) == 0o755 & ~_umask()


def _umask() -> int:
    old = os.umask(0)
    os.umask(old)
    return old


def test_stale_socket_is_replaced(sock_dir: Path) -> None:
    sock_dir.mkdir()
    path = socket_path("wgt2", str(sock_dir))
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(path)
    dead.close()  # the file stays, nobody listens: a crashed daemon's leftover
    assert os.path.exists(path)
    listener = open_uapi_listener("wgt2", str(sock_dir))
    try:
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.connect(path)
        probe.close()
    finally:
        listener.close()


def test_live_socket_is_in_use(running: RunningServer, sock_dir: Path) -> None:
    with pytest.raises(UAPISocketInUseError, match="in use"):
        open_uapi_listener("wgt0", str(sock_dir))
    assert Client(running.path).send(b"get=1\n\n").answers(1) == [b"errno=0\n\n"]


def test_close_unlinks_only_our_socket(backend: FakeBackend, sock_dir: Path) -> None:
    srv = RunningServer(backend, open_uapi_listener("wgt3", str(sock_dir)))
    assert srv.path is not None
    srv.stop()
    assert not os.path.exists(srv.path)
    # A server whose file was replaced by another daemon's leaves the new file alone.
    srv = RunningServer(backend, open_uapi_listener("wgt3", str(sock_dir)))
    assert srv.path is not None
    os.unlink(srv.path)
    other = open_uapi_listener("wgt3", str(sock_dir))
    try:
        srv.stop()
        assert os.path.exists(srv.path)
    finally:
        other.close()


def test_socket_removal_is_noticed(backend: FakeBackend, sock_dir: Path) -> None:
    srv = RunningServer(
        backend, open_uapi_listener("wgt4", str(sock_dir)), socket_check_interval=0.01
    )
    try:
        assert srv.path is not None
        assert not srv.server.socket_gone.is_set()
        os.unlink(srv.path)
        srv.call(_wait_event(srv))
        assert srv.server.socket_gone.is_set()
    finally:
        srv.stop()


async def _wait_event(srv: RunningServer) -> None:
    await asyncio.wait_for(srv.server.socket_gone.wait(), ANSWER_TIMEOUT)


def test_listener_from_inherited_fd(backend: FakeBackend, sock_dir: Path) -> None:
    original = open_uapi_listener("wgt5", str(sock_dir))
    fd = os.dup(original.fileno())
    original.close()
    srv = RunningServer(backend, listener_from_fd(fd))
    try:
        assert srv.path == socket_path("wgt5", str(sock_dir))
        assert Client(srv.path).send(b"get=1\n\n").answers(1) == [b"errno=0\n\n"]
    finally:
        srv.stop()
    assert not os.path.exists(socket_path("wgt5", str(sock_dir)))


def test_listener_from_fd_rejects_other_sockets() -> None:
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        with pytest.raises(OSError, match="not a UNIX stream socket"):
            listener_from_fd(udp.fileno())
    finally:
        udp.close()


def test_blocking_client_helpers(running: RunningServer, backend: FakeBackend) -> None:
    assert running.path is not None
    backend.peers[K1] = FakePeer(tx_bytes=5, allowed_ips=[net("10.0.0.0/8")])
    configure_device(running.path, SetRequest(fwmark=9, peers=[PeerChange(K2, update_only=True)]))
    snapshot = query_device(running.path)
    assert snapshot.fwmark == 9
    assert [p.public_key for p in snapshot.peers] == [K1]
    assert snapshot.peers[0].tx_bytes == 5
    with pytest.raises(UAPIError) as info:
        configure_device(running.path, SetRequest(listen_port=1))
    assert info.value.errno == -98


@pytest.mark.slow
def test_back_pressure_client_that_does_not_read(running: RunningServer) -> None:
    # 2000 pipelined gets whose answers the client reads only at the end: the server must
    # neither buffer without bound nor stall other clients.
    running.backend.peers = {bytes([i]) * 32: FakePeer() for i in range(1, 6)}
    c = Client(running.path)
    c.send(b"get=1\n\n" * 2000)
    assert Client(running.path).send(b"set=1\nfwmark=1\n\n").answers(1) == [b"errno=0\n\n"]
    answers = c.answers(2000)
    assert len(parse_get_response(answers[-1]).peers) == 5
    assert isinstance(parse_get_response(answers[0]), DeviceSnapshot)
