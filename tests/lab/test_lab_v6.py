"""The lab's IPv6 LANs (lab/v6.py): routed prefixes behind a stateful firewall, no NAT66.

Unsolicited inbound UDP is dropped (and counted); a reply to an inside host's packet comes
back; two inside hosts behind two firewalls punch through once each has sent to the other.
The routers are HARD IPv4 NATs, so IPv6 is the only direct path between the two LANs.
"""

from __future__ import annotations

import socket

import pytest

from meshscale.lab import Lab, NatKind
from meshscale.lab.v6 import add_v6_host, enable_v6_lan, firewall_drops, lan_prefix

pytestmark = pytest.mark.lab


def _udp6(host_sock: socket.socket, port: int) -> socket.socket:
    host_sock.bind(("::", port))
    host_sock.settimeout(1.0)
    return host_sock


def _recv(sock: socket.socket) -> tuple[bytes, str] | None:
    try:
        data, addr = sock.recvfrom(2048)
    except TimeoutError:
        return None
    return data, addr[0]


def test_v6_lan_firewall_and_punch(lab: Lab) -> None:
    pub = lab.add_public_host("v6pub")
    r1, r2 = lab.add_nat("v6r1", NatKind.HARD), lab.add_nat("v6r2", NatKind.HARD)
    p1, p2 = enable_v6_lan(r1), enable_v6_lan(r2)
    assert p1 != p2 and p1 == lan_prefix(r1)
    a, b = lab.add_private_host("v6a", behind=r1), lab.add_private_host("v6b", behind=r2)
    ip_a, ip_b = add_v6_host(a), add_v6_host(b)
    assert ip_a in p1 and ip_b in p2 and a.ip6 == ip_a

    s_pub = _udp6(pub.socket(socket.AF_INET6, socket.SOCK_DGRAM), 5000)
    s_a = _udp6(a.socket(socket.AF_INET6, socket.SOCK_DGRAM), 5000)
    s_b = _udp6(b.socket(socket.AF_INET6, socket.SOCK_DGRAM), 5000)
    try:
        # Unsolicited: public -> a is dropped by r1's firewall, and counted.
        before = firewall_drops(r1)
        s_pub.sendto(b"unsolicited", (str(ip_a), 5000))
        assert _recv(s_a) is None
        assert firewall_drops(r1) == before + 1
        # Solicited: a -> public, the reply comes back; no NAT66, so pub sees a's own address.
        s_a.sendto(b"hello", (str(pub.ip6), 5000))
        got = _recv(s_pub)
        assert got == (b"hello", str(ip_a))
        s_pub.sendto(b"reply", (str(ip_a), 5000))
        assert _recv(s_a) == (b"reply", str(pub.ip6))
        # Punch: a's first packet to b dies at r2, but opens r1; b's then gets through to a,
        # and opens r2, so a's next one reaches b.
        s_a.sendto(b"a1", (str(ip_b), 5000))
        assert _recv(s_b) is None
        s_b.sendto(b"b1", (str(ip_a), 5000))
        assert _recv(s_a) == (b"b1", str(ip_b))
        s_a.sendto(b"a2", (str(ip_b), 5000))
        assert _recv(s_b) == (b"a2", str(ip_a))
    finally:
        for s in (s_pub, s_a, s_b):
            s.close()
