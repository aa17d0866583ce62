"""In-memory WireGuard pairs: two Device cores wired back to back, no sockets."""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass, field
from ipaddress import ip_network

from meshscale.wireguard import Device
from meshscale.wireguard.crypto import clamp, public_key


def seeded_rand(seed: int):
    r = random.Random(seed)
    return lambda n: r.randbytes(n)


def ipv4_packet(src: str, dst: str, payload: bytes = b"x" * 20, proto: int = 17) -> bytes:
    import ipaddress

    total = 20 + len(payload)
    hdr = struct.pack(
        ">BBHHHBBH4s4s",
        0x45,
        0,
        total,
        0,
        0,
        64,
        proto,
        0,
        ipaddress.IPv4Address(src).packed,
        ipaddress.IPv4Address(dst).packed,
    )
    return hdr + payload


def ipv6_packet(src: str, dst: str, payload: bytes = b"y" * 20) -> bytes:
    import ipaddress

    hdr = struct.pack(
        ">IHBB16s16s",
        6 << 28,
        len(payload),
        17,
        64,
        ipaddress.IPv6Address(src).packed,
        ipaddress.IPv6Address(dst).packed,
    )
    return hdr + payload


@dataclass
class Side:
    dev: Device
    ep: tuple[str, int]
    inbox: list[bytes] = field(default_factory=list)


class Pair:
    """Two devices A (10.0.0.1) and B (10.0.0.2) that know each other, on a lossless wire."""

    def __init__(self, seed: int = 1, *, psk: bytes | None = None, mtu: int = 1420) -> None:
        self.rand = seeded_rand(seed)
        self.now = 1000.0
        ka, kb = clamp(self.rand(32)), clamp(self.rand(32))
        self.a = Side(Device(rand=self.rand, mtu=mtu), ("192.0.2.1", 51820))
        self.b = Side(Device(rand=self.rand, mtu=mtu), ("192.0.2.2", 51820))
        self.a.dev.set_private_key(ka)
        self.b.dev.set_private_key(kb)
        self.pa = self.a.dev.add_peer(public_key(kb))
        self.pb = self.b.dev.add_peer(public_key(ka))
        self.a.dev.allowed_ips.insert(ip_network("10.0.0.2/32"), self.pa)
        self.a.dev.allowed_ips.insert(ip_network("fd00::2/128"), self.pa)
        self.b.dev.allowed_ips.insert(ip_network("10.0.0.1/32"), self.pb)
        self.b.dev.allowed_ips.insert(ip_network("fd00::1/128"), self.pb)
        self.a.dev.set_endpoint(self.pa, self.b.ep)
        self.b.dev.set_endpoint(self.pb, self.a.ep)
        if psk:
            self.a.dev.set_preshared_key(self.pa, psk)
            self.b.dev.set_preshared_key(self.pb, psk)
        self.wire: list[tuple[Side, bytes]] = []  # (destination, datagram)
        self.sent_sizes: list[int] = []

    def other(self, s: Side) -> Side:
        return self.b if s is self.a else self.a

    def collect(self, src: Side) -> None:
        for ep, data in src.dev.datagrams_to_send():
            dst = self.a if ep == self.a.ep else self.b if ep == self.b.ep else None
            self.sent_sizes.append(len(data))
            if dst is not None:
                self.wire.append((dst, data))

    def send(self, src: Side, packets: list[bytes]) -> None:
        for ep, msgs in src.dev.encrypt_packets(packets, self.now):
            dst = self.a if ep == self.a.ep else self.b
            for parts in msgs:
                datagram = b"".join(parts)
                self.sent_sizes.append(len(datagram))
                self.wire.append((dst, datagram))
        self.collect(src)

    def deliver(self, max_rounds: int = 20) -> int:
        """Deliver everything in flight until quiet; fail past max_rounds."""
        for _ in range(max_rounds):
            if not self.wire:
                return 0
            wire, self.wire = self.wire, []
            for dst, data in wire:
                src_ep = self.other(dst).ep
                dst.inbox.extend(dst.dev.receive_datagrams([(data, src_ep)], self.now))
                self.collect(dst)
        raise AssertionError("pair did not go quiet")

    def advance(self, seconds: float, step: float = 0.5) -> None:
        """Move time forward, firing timers and delivering traffic."""
        end = self.now + seconds
        while self.now < end:
            self.now = min(end, self.now + step)
            for s in (self.a, self.b):
                deadline = s.dev.get_timer()
                if deadline is not None and deadline <= self.now:
                    s.dev.handle_timer(self.now)
                    self.collect(s)
            self.deliver()
