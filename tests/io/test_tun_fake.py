"""TunDevice driven through a SOCK_SEQPACKET pair instead of /dev/net/tun (no root needed).

A seqpacket socket keeps message boundaries like a TUN descriptor, so the far end can play the
kernel: write frames for read_batch and read what write_batch produced.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from meshscale.io.tun import READ_SIZE, TunClosedError, TunDevice
from meshscale.packet import ZERO_HDR, VirtioNetHdr, gso_split, parse_ip
from meshscale.packet.gro import coalesce

from ..packet.builders import kernel_receive, l4_ok, super_tcp, super_udp, tcp, udp


@pytest.fixture(params=[True, False], ids=["vnet", "plain"])
def pair(request: pytest.FixtureRequest) -> Iterator[tuple[TunDevice, socket.socket]]:
    ours, kernel = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    kernel.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    ours.setblocking(False)
    dev = TunDevice(ours.detach(), "lo", 1420, vnet_hdr=request.param, uso=request.param)
    with kernel:
        yield dev, kernel
        dev.close()


def frame(dev: TunDevice, pkt: bytes) -> bytes:
    return pkt if not dev.offload else ZERO_HDR + pkt


def test_read_batch_splits_and_drains(pair: tuple[TunDevice, socket.socket]) -> None:
    dev, kernel = pair
    if dev.offload:
        frames = [
            bytes(10) + tcp(b"a" * 10, seq=1),
            super_tcp(b"b" * 9000, 1380),
            super_udp(b"c" * 2500, 1000, v6=True),
            super_tcp(b"d" * 4000, 1000, v6=True),
        ]
        want = [p for f in frames for p in gso_split(f)[0]]
    else:
        frames = want = [tcp(b"a" * 10, seq=1), udp(b"u" * 1000), tcp(b"z", seq=3, v6=True)]
    for f in frames:
        kernel.send(f)
    got = [bytes(v) for v in dev.read_batch()]
    assert got == want
    assert all(l4_ok(p) for p in got)
    st = dev.statistics()
    assert (st.reads, st.packets_read) == (len(frames), len(want))
    assert st.super_packets == (3 if dev.offload else 0)
    assert all(parse_ip(p).total_length == len(p) for p in got)


def test_max_packets_is_a_soft_bound(pair: tuple[TunDevice, socket.socket]) -> None:
    dev, kernel = pair
    for i in range(10):
        kernel.send(frame(dev, tcp(bytes([i]) * 100, seq=i)))
    assert len(dev.read_batch(4)) == 4
    assert len(dev.read_batch(100)) == 6


def test_truncated_frame_is_dropped(pair: tuple[TunDevice, socket.socket]) -> None:
    dev, kernel = pair
    kernel.send(bytes(READ_SIZE + 10))
    kernel.send(frame(dev, udp(b"ok")))
    assert [bytes(v) for v in dev.read_batch()] == [udp(b"ok")]
    assert dev.statistics().read_dropped == 1


def test_padding(pair: tuple[TunDevice, socket.socket]) -> None:
    dev, kernel = pair
    kernel.send(frame(dev, tcp(b"q" * 44, seq=1)))  # 84 bytes
    kernel.send(frame(dev, udp(b"r" * 1392)))  # 1420 bytes: at the MTU, no padding
    views = dev.read_batch(pad=True)
    assert [len(v) for v in views] == [96, 1420]
    assert bytes(views[0][84:]) == bytes(12)


def test_write_batch_coalesces(pair: tuple[TunDevice, socket.socket]) -> None:
    dev, kernel = pair
    pkts = [tcp(bytes([i]) * 1000, seq=1 + 1000 * i) for i in range(20)] + [udp(b"x")]
    assert dev.write_batch(pkts) == 21
    frames = []
    while True:
        try:
            frames.append(kernel.recv(70000, socket.MSG_DONTWAIT))
        except BlockingIOError:
            break
    if dev.offload:
        assert len(frames) == 2
        whole = kernel_receive([frames[0]])
        assert VirtioNetHdr.unpack(frames[0]).gso_size == 1000
        assert whole[40:] == b"".join(bytes([i]) * 1000 for i in range(20))
        assert frames[1] == ZERO_HDR + udp(b"x")
        st = dev.statistics()
        assert (st.writes, st.packets_written, st.coalesced) == (2, 21, 19)
    else:
        assert frames == pkts


def test_write_errors_are_counted(pair: tuple[TunDevice, socket.socket]) -> None:
    dev, kernel = pair
    kernel.shutdown(socket.SHUT_RD)  # writes now fail with EPIPE, like a TUN that is down
    assert dev.write_batch([udp(b"a"), udp(b"b")]) == 0
    assert dev.statistics().write_dropped == 2


def test_close_wakes_reader_and_is_final(pair: tuple[TunDevice, socket.socket]) -> None:
    dev, _ = pair
    errors: list[BaseException] = []

    def reader() -> None:
        try:
            dev.read_batch()
        except BaseException as e:
            errors.append(e)

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    time.sleep(0.05)
    dev.close()
    t.join(5)
    assert not t.is_alive() and len(errors) == 1 and isinstance(errors[0], TunClosedError)
    with pytest.raises(TunClosedError):
        dev.read_batch()
    with pytest.raises(TunClosedError):
        dev.write_batch([])


def test_lone_packet_after_idle_is_returned_without_draining(
    pair: tuple[TunDevice, socket.socket],
) -> None:
    dev, kernel = pair
    for i in range(3):
        kernel.send(frame(dev, tcp(bytes([i]) * 100, seq=i)))
    # A fresh device counts as drained: the first packet comes alone, one read ...
    assert [bytes(v) for v in dev.read_batch(lone=True)] == [tcp(b"\0" * 100, seq=0)]
    assert dev.statistics().reads == 1
    # ... the rest of the burst in one batch, ending on the read that finds the queue empty.
    assert len(dev.read_batch(lone=True)) == 2
    kernel.send(frame(dev, udp(b"x" * 44)))
    assert [bytes(v) for v in dev.read_batch(lone=True, pad=True)] == [udp(b"x" * 44) + bytes(8)]
    if dev.offload:
        # A super-packet after idle is split whole: it is a batch, not a lone packet.
        kernel.send(super_tcp(b"b" * 9000, 1380))
        assert len(dev.read_batch(lone=True)) == 7
    # Without lone a burst after idle comes in one batch.
    for i in range(3):
        kernel.send(frame(dev, tcp(bytes([i]) * 100, seq=i)))
    assert len(dev.read_batch()) == 3


@pytest.mark.parametrize("v6", [False, True], ids=["v4", "v6"])
def test_lone_write_is_what_the_coalescer_writes(
    pair: tuple[TunDevice, socket.socket], v6: bool
) -> None:
    dev, kernel = pair
    for pkt in (tcp(b"p" * 37, seq=9, v6=v6), udp(b"q" * 300, v6=v6), udp(b"r")):
        padded = pkt + bytes((-len(pkt)) & 15)  # as WireGuard delivers it, padding left on
        assert dev.write_batch([padded]) == 1
        got = kernel.recv(70000, socket.MSG_DONTWAIT)
        if dev.offload:
            want = coalesce([padded], udp=True)
            assert got == b"".join(bytes(b) for b in want[0])
            assert got == ZERO_HDR + (pkt if len(pkt) >= 40 else padded)
        else:
            assert got == padded
    assert dev.statistics().packets_written == 3
