"""Real TUN devices in lab namespaces: the kernel must accept what we split and coalesce."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import socket
import struct
import threading
import time

import pytest

from meshscale.io.tun import TunClosedError, TunDevice, TunError, TunGoneError
from meshscale.io.udp import UDPSocket
from meshscale.lab import Lab

from .harness import Forwarder, Side, call_in_netns, ns_ip, open_tun_side

pytestmark = [pytest.mark.lab, pytest.mark.slow]

TRANSFER = 6 * 1024 * 1024  # in bytes, per direction
DEADLINE = 30.0  # in seconds, for every wait in these tests


def two_sides(lab: Lab, offload: bool) -> tuple[Side, Side]:
    a, b = lab.add_public_host("a"), lab.add_public_host("b")
    return open_tun_side(a.ns, "mst0", 1, offload), open_tun_side(b.ns, "mst0", 2, offload)


def transfer(src: Side, dst: Side, v6: bool) -> None:
    """Send TRANSFER random bytes over TCP from src's namespace to dst's and compare hashes."""
    fam = socket.AF_INET6 if v6 else socket.AF_INET
    srv = call_in_netns(dst.ns, lambda: socket.socket(fam, socket.SOCK_STREAM))
    cli = call_in_netns(src.ns, lambda: socket.socket(fam, socket.SOCK_STREAM))
    with srv, cli:
        srv.bind((dst.ip6 if v6 else dst.ip4, 0))
        srv.listen(1)
        srv.settimeout(DEADLINE)
        cli.settimeout(DEADLINE)
        data = os.urandom(TRANSFER)
        got: list[bytes] = []

        def serve() -> None:
            conn, _ = srv.accept()
            with conn:
                conn.settimeout(DEADLINE)
                h = hashlib.sha256()
                n = 0
                while chunk := conn.recv(1 << 20):
                    h.update(chunk)
                    n += len(chunk)
                got.append(h.digest() + n.to_bytes(8, "big"))

        t = threading.Thread(target=serve, daemon=True)
        t.start()
        cli.connect(srv.getsockname()[:2])
        cli.sendall(data)
        cli.shutdown(socket.SHUT_WR)
        t.join(DEADLINE)
        assert got == [hashlib.sha256(data).digest() + TRANSFER.to_bytes(8, "big")]


@pytest.mark.parametrize(
    ("offload", "pad"),
    [(True, False), (False, False), (True, True), (False, True)],
    ids=["offload", "plain", "offload-padded", "plain-padded"],
)
def test_forwarder_carries_tcp_both_ways(lab: Lab, offload: bool, pad: bool) -> None:
    # pad: reads come back with WireGuard padding, which write_batch must trim again.
    a, b = two_sides(lab, offload)
    assert a.tun.offload is offload and b.tun.offload is offload
    with Forwarder(a.tun, b.tun, pad=pad) as fwd:
        for v6 in (False, True):
            transfer(a, b, v6)
            transfer(b, a, v6)
        sa, sb = a.tun.statistics(), b.tun.statistics()
    assert not fwd.errors
    assert sa.read_dropped == sb.read_dropped == 0
    assert sa.write_dropped == sb.write_dropped == 0
    if offload:
        # Proof that both offload paths ran: super-packets were split and GRO merged them
        # again, and the kernel accepted the result (the hashes above matched).
        assert sa.super_packets > 0 and sb.super_packets > 0
        assert sa.coalesced > 0 and sb.coalesced > 0
        assert sa.gro_bad_checksum == sb.gro_bad_checksum == 0
    else:
        assert sa.super_packets == sb.super_packets == sa.coalesced == 0


def test_close_wakes_a_blocked_reader(lab: Lab) -> None:
    ns = lab.add_public_host("a").ns
    tun = call_in_netns(ns, lambda: TunDevice.open("mst1"))
    errors: list[BaseException] = []

    def reader() -> None:
        try:
            for _ in range(1000):  # the kernel may send router solicitations meanwhile
                tun.read_batch()
        except BaseException as e:
            errors.append(e)

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    time.sleep(0.1)
    tun.close()
    t.join(DEADLINE)
    assert not t.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], TunClosedError)
    with pytest.raises(TunClosedError):
        tun.write_batch([b"x"])
    tun.close()  # idempotent


@pytest.mark.parametrize("offload", [True, False], ids=["offload", "plain"])
def test_deleted_interface_is_reported(lab: Lab, offload: bool) -> None:
    ns = lab.add_public_host("a").ns
    tun = call_in_netns(ns, lambda: TunDevice.open("mst2", offload=offload))
    errors: list[BaseException] = []

    def reader() -> None:
        try:
            for _ in range(1000):  # the kernel may send router solicitations meanwhile
                tun.read_batch()
        except BaseException as e:
            errors.append(e)

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    time.sleep(0.1)
    ns_ip(ns, "link", "del", "mst2")
    t.join(DEADLINE)
    assert not t.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], TunGoneError), errors
    with pytest.raises(TunGoneError):
        tun.write_batch([bytes(40)])
    tun.close()


def test_open_sets_mtu_up_and_offloads(lab: Lab) -> None:
    ns = lab.add_public_host("a").ns
    with call_in_netns(ns, lambda: TunDevice.open("mst3", mtu=1280)) as tun:
        assert (tun.name, tun.mtu, tun.offload) == ("mst3", 1280, True)
        show = lab.hosts["a"].run(["ip", "link", "show", "mst3"]).stdout
        assert "mtu 1280" in show and ",UP" in show
        assert tun.fileno() >= 0


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_forwarder_carries_udp_gso(lab: Lab, v6: bool) -> None:
    # A UDP_SEGMENT sender makes the kernel hand us UDP_L4 super-packets (USO); we split them
    # and coalesce them again on the other side (UDP GRO); every datagram must arrive intact.
    a, b = two_sides(lab, True)
    assert a.tun.uso and b.tun.uso
    host = b.ip6 if v6 else b.ip4
    rx = call_in_netns(b.ns, lambda: UDPSocket.bind(host, 0))
    tx = call_in_netns(a.ns, lambda: UDPSocket.bind("::" if v6 else "0.0.0.0", 0))
    msgs = [[i.to_bytes(4, "big"), bytes([i % 251]) * 1200] for i in range(400)]
    got: list[bytes] = []
    with rx, tx, Forwarder(a.tun, b.tun) as fwd:
        deadline = time.monotonic() + DEADLINE
        for k in range(0, 400, 40):  # paced so that no socket buffer overflows
            assert tx.send_batch(rx.getsockname(), msgs[k : k + 40]) == 40
            while len(got) < k + 40 and time.monotonic() < deadline:
                got.extend(bytes(v) for v, _ in rx.recv_batch())
        sa, sb = a.tun.statistics(), b.tun.statistics()
    assert not fwd.errors
    assert got == [b"".join(m) for m in msgs]
    assert sa.super_packets > 0 and sb.coalesced > 0


@pytest.mark.parametrize("vnet", [True, False], ids=["vnet", "plain"])
def test_adopted_descriptor(lab: Lab, vnet: bool) -> None:
    # A descriptor attached by someone else (WG_TUN_FD): flags and name come from TUNGETIFF.
    ha, hb = lab.add_public_host("a"), lab.add_public_host("b")
    flags = 0x0001 | 0x1000 | (0x4000 if vnet else 0)  # IFF_TUN | IFF_NO_PI [| IFF_VNET_HDR]

    def attach() -> int:
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
        fcntl.ioctl(fd, 0x400454CA, struct.pack("16sH22x", b"mst4", flags))  # TUNSETIFF
        return fd

    fd = call_in_netns(hb.ns, attach)
    ns_ip(hb.ns, "link", "set", "mst4", "mtu", "1380", "up")
    tun_b = call_in_netns(hb.ns, lambda: TunDevice.from_fd(fd))
    assert (tun_b.name, tun_b.mtu, tun_b.offload, tun_b.uso) == ("mst4", 1380, vnet, vnet)
    ns_ip(hb.ns, "addr", "add", "10.77.0.2/24", "dev", "mst4")
    ns_ip(hb.ns, "-6", "addr", "add", "fd77::2/64", "dev", "mst4", "nodad")
    a = open_tun_side(ha.ns, "mst0", 1, True)
    b = Side(hb.ns, tun_b, "10.77.0.2", "fd77::2")
    with Forwarder(a.tun, b.tun) as fwd:
        transfer(a, b, False)
        transfer(b, a, True)
    assert not fwd.errors


def test_capability_ladder(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    # Pretend the kernel refuses USO, then all offloads: open() steps down a rung each time.
    import meshscale.io.tun as tun_mod

    ns = lab.add_public_host("a").ns
    real = tun_mod._set_offload
    monkeypatch.setattr(
        tun_mod,
        "_set_offload",
        lambda fd, flags: not flags & tun_mod.UDP_OFFLOADS and real(fd, flags),
    )
    with call_in_netns(ns, lambda: TunDevice.open("mst5")) as t:
        assert (t.offload, t.uso) == (True, False)
        assert "vnet_hdr on" in lab.hosts["a"].run(["ip", "-d", "link", "show", "mst5"]).stdout
    monkeypatch.setattr(tun_mod, "_set_offload", lambda fd, flags: False)
    with call_in_netns(ns, lambda: TunDevice.open("mst5")) as t:
        assert (t.offload, t.uso) == (False, False)
        flags = lab.hosts["a"].run(["ip", "-d", "link", "show", "mst5"]).stdout
        assert "vnet_hdr off" in flags and "tun" in flags
    # A kernel without IFF_VNET_HDR rejects the flag itself (EINVAL).
    monkeypatch.setattr(tun_mod, "_set_offload", real)
    real_create = tun_mod._create

    def no_vnet(name: str, flags: int) -> tuple[int, str]:
        if flags & tun_mod.IFF_VNET_HDR:
            raise TunError(errno.EINVAL, "no vnet header here")
        return real_create(name, flags)

    monkeypatch.setattr(tun_mod, "_create", no_vnet)
    with call_in_netns(ns, lambda: TunDevice.open("mst5")) as t:
        assert (t.offload, t.uso) == (False, False)


def test_open_errors(lab: Lab) -> None:
    ns = lab.add_public_host("a").ns
    with pytest.raises(TunError):
        call_in_netns(ns, lambda: TunDevice.open("eth0"))  # exists and is not a TUN
    with pytest.raises(ValueError, match="interface name"):
        TunDevice.open("x" * 16)


def test_udp_gro_output_reaches_a_plain_socket(lab: Lab) -> None:
    # Our UDP GRO writes one UDP_L4 super-packet; a receiver without UDP_GRO must still get
    # the original datagrams one by one (the kernel segments for it).
    a, b = two_sides(lab, True)
    rx = call_in_netns(b.ns, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    rx.bind((b.ip4, 0))
    rx.settimeout(DEADLINE)
    tx = call_in_netns(a.ns, lambda: UDPSocket.bind("0.0.0.0", 0))
    msgs = [[bytes([i]) * 1000] for i in range(30)]
    with rx, tx, Forwarder(a.tun, b.tun) as fwd:
        assert tx.send_batch(rx.getsockname(), msgs) == 30
        got = [rx.recv(2000) for _ in range(30)]
        coalesced = b.tun.statistics().coalesced
    assert not fwd.errors
    assert got == [m[0] for m in msgs]
    assert coalesced > 0
