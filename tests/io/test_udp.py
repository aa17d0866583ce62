"""UDPSocket over loopback and between lab namespaces: GSO sends, GRO receives, wake-up."""

from __future__ import annotations

import os
import socket
import threading
import time

import pytest

from meshscale.io.udp import UDPClosedError, UDPSocket
from meshscale.lab import Lab

from .harness import call_in_netns

DEADLINE = 10.0  # in seconds


def receive(sock: UDPSocket, count: int) -> list[tuple[bytes, tuple[str, int]]]:
    got: list[tuple[bytes, tuple[str, int]]] = []
    deadline = time.monotonic() + DEADLINE
    while len(got) < count and time.monotonic() < deadline:
        got.extend((bytes(v), a) for v, a in sock.recv_batch())
    return got


def messages(n: int, size: int) -> list[list[bytes]]:
    return [[i.to_bytes(4, "big"), bytes([i % 256]) * (size - 4)] for i in range(n)]


@pytest.mark.parametrize("gso", [True, False], ids=["gso", "plain"])
@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_loopback_batch_arrives_intact_and_in_order(host: str, gso: bool) -> None:
    with UDPSocket.bind(host, 0) as rx, UDPSocket.bind(host, 0) as tx:
        assert rx.gro and tx.gso
        tx.gso = gso
        msgs = [*messages(150, 1452), [b"short tail"]]
        assert tx.send_batch(rx.getsockname(), msgs) == 151
        got = receive(rx, 151)
        assert [d for d, _ in got] == [b"".join(m) for m in msgs]
        assert {a for _, a in got} == {tx.getsockname()}
        st, sr = tx.statistics(), rx.statistics()
        assert st.sent == 151 and st.send_dropped == 0
        if gso:
            # 45 x 1452 bytes fit in one 65507-byte GSO send: 4 calls, not 151.
            assert st.send_calls == 4
            assert sr.recv_calls < 151  # GRO glued datagrams together
        else:
            assert st.send_calls == 151


def test_mixed_sizes_are_grouped_correctly() -> None:
    with UDPSocket.bind("127.0.0.1", 0) as rx, UDPSocket.bind("127.0.0.1", 0) as tx:
        sizes = [100, 100, 100, 60, 100, 200, 200, 10, 10, 300, *[64] * 70]
        msgs = [[bytes([i]) * s] for i, s in enumerate(sizes)]
        assert tx.send_batch(rx.getsockname(), msgs) == len(msgs)
        assert [d for d, _ in receive(rx, len(msgs))] == [m[0] for m in msgs]
        # Runs: [100 x3, 60] [100] [200, 200, 10] [10] [300] [64 x 64] [64 x 6]
        assert tx.statistics().send_calls == 7


def test_dual_stack_socket_talks_ipv4() -> None:
    with UDPSocket.bind("::", 0) as rx, UDPSocket.bind("127.0.0.1", 0) as v4:
        port = rx.getsockname()[1]
        assert v4.send_batch(("127.0.0.1", port), messages(3, 100)) == 3
        got = receive(rx, 3)
        assert [a for _, a in got] == [v4.getsockname()] * 3  # plain IPv4, not ::ffff:
        assert rx.send_batch(v4.getsockname(), messages(2, 50)) == 2  # IPv4 peer from IPv6
        assert len(receive(v4, 2)) == 2


def test_close_wakes_a_blocked_reader() -> None:
    sock = UDPSocket.bind("127.0.0.1", 0)
    errors: list[BaseException] = []

    def reader() -> None:
        try:
            sock.recv_batch()
        except BaseException as e:
            errors.append(e)

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    time.sleep(0.05)
    sock.close()
    t.join(DEADLINE)
    assert not t.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], UDPClosedError)
    with pytest.raises(UDPClosedError):
        sock.send_batch(("127.0.0.1", 9), [[b"x"]])
    with pytest.raises(UDPClosedError):
        sock.recv_batch()


def test_unreachable_destination_is_counted_not_raised() -> None:
    with UDPSocket.bind("127.0.0.1", 0) as tx:
        # An IPv6 destination from an IPv4 socket cannot be sent to: dropped and counted.
        assert tx.send_batch(("::1", 9), messages(3, 100)) == 0
        assert tx.statistics().send_dropped == 3


@pytest.mark.lab
@pytest.mark.slow
def test_gso_gro_between_namespaces(lab: Lab) -> None:
    a, b = lab.add_public_host("a"), lab.add_public_host("b")
    for v6 in (False, True):
        rx = call_in_netns(b.ns, lambda: UDPSocket.bind("::", 0))
        tx = call_in_netns(a.ns, lambda: UDPSocket.bind("::", 0))
        with rx, tx:
            dst = (str(b.ip6) if v6 else str(b.ip), rx.getsockname()[1])
            msgs = messages(640, 1452)
            got: list[tuple[bytes, tuple[str, int]]] = []
            for k in range(0, 640, 64):  # paced: at most 64 in flight
                assert tx.send_batch(dst, msgs[k : k + 64]) == 64
                got += receive(rx, 64)
            assert [d for d, _ in got] == [b"".join(m) for m in msgs]
            assert {h for _, (h, _) in got} == {str(a.ip6) if v6 else str(a.ip)}
            assert tx.statistics().send_calls <= 2 * 10
            assert rx.statistics().recv_calls < 640


@pytest.mark.lab
@pytest.mark.slow
def test_gso_refused_falls_back_to_plain_sends(lab: Lab) -> None:
    # A GSO segment above the path MTU (veth, 1500) makes the kernel refuse (EMSGSIZE): those
    # datagrams are resent one by one (the kernel fragments them), and after three refusals in
    # a row the socket stops trying GSO.
    a, b = lab.add_public_host("a"), lab.add_public_host("b")
    rx = call_in_netns(b.ns, lambda: UDPSocket.bind(str(b.ip), 0))
    tx = call_in_netns(a.ns, lambda: UDPSocket.bind(str(a.ip), 0))
    with rx, tx:
        assert tx.gso
        for round_ in range(3):
            msgs = messages(4, 2000)
            assert tx.send_batch(rx.getsockname(), msgs) == 4
            assert [d for d, _ in receive(rx, 4)] == [b"".join(m) for m in msgs]
            assert tx.gso is (round_ < 2)
        assert tx.send_batch(rx.getsockname(), messages(5, 1000)) == 5
        assert len(receive(rx, 5)) == 5
        assert tx.statistics().send_calls == 3 * (1 + 4) + 5


def test_set_mark() -> None:
    if os.geteuid() != 0:
        pytest.skip("SO_MARK needs CAP_NET_ADMIN")
    with UDPSocket.bind("127.0.0.1", 0) as s:
        s.set_mark(0x51820)
        with socket.socket(fileno=os.dup(s.fileno())) as view:
            assert view.getsockopt(socket.SOL_SOCKET, 36) == 0x51820


def test_lone_datagram_after_idle_comes_alone_then_the_burst_batches() -> None:
    with UDPSocket.bind("127.0.0.1", 0) as rx, UDPSocket.bind("127.0.0.1", 0) as tx:
        tx.gso = False  # separate datagrams, so GRO cannot glue them
        dst = rx.getsockname()
        assert tx.send_batch(dst, [[b"a" * 10], [b"b" * 20], [b"c" * 30]]) == 3
        # Fresh socket counts as drained: the first datagram comes alone ...
        assert [bytes(d) for d, _ in rx.recv_batch(lone=True)] == [b"a" * 10]
        # ... and the rest of the burst in one batch, which drains the queue.
        assert [bytes(d) for d, _ in rx.recv_batch(lone=True)] == [b"b" * 20, b"c" * 30]
        assert tx.send_batch(dst, [[b"d"]]) == 1
        assert [bytes(d) for d, _ in rx.recv_batch(lone=True)] == [b"d"]
        # A GRO-coalesced receive is a batch, not a lone datagram: split whole.
        tx.gso = True
        assert tx.send_batch(dst, messages(3, 100)) == 3
        assert len(rx.recv_batch(lone=True)) == 3
        # Without lone, a burst after idle comes in one batch.
        tx.gso = False
        assert tx.send_batch(dst, messages(3, 100)) == 3
        assert len(rx.recv_batch()) == 3
        assert rx.statistics().received == 10


def test_lone_send_counts_like_a_batch() -> None:
    with UDPSocket.bind("127.0.0.1", 0) as rx, UDPSocket.bind("127.0.0.1", 0) as tx:
        assert tx.send_batch(rx.getsockname(), [[b"hdr", b"payload"]]) == 1
        assert [d for d, _ in receive(rx, 1)] == [b"hdrpayload"]
        assert tx.send_batch(("::1", 9), [[b"x"]]) == 0  # unreachable from IPv4: counted
        st = tx.statistics()
        assert (st.sent, st.send_calls, st.send_dropped) == (1, 2, 1)
