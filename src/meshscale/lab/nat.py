"""NAT behaviours of lab routers, as nftables rulesets.

The names follow tailscale's natlab grid (tstest/integration/nat): an "easy" NAT keeps one
mapping per inside endpoint whatever the destination (RFC 4787 endpoint-independent mapping), a
"hard" NAT picks a new mapping per destination (endpoint-dependent mapping, i.e. symmetric NAT).

Linux masquerade keeps the source port unless the resulting tuple clashes with an existing
conntrack entry, so one inside socket talking to two servers is seen from the same public
ip:port by both: that is EASY. `fully-random` makes the kernel pick a random port for every new
conntrack entry, so each destination sees a different port: that is HARD. UDP_BLOCK masquerades
and drops every forwarded UDP packet, the shape of a network that only lets TCP out (the case
where clients must fall back to DERP over TCP).

Every kind drops unsolicited UDP arriving on the WAN, as home routers do. Without that, a
hole-punching packet that reaches the router before its inside host has sent anything would be
taken by the router itself, and its conntrack entry (public ip:port <-> peer) would make the
masquerade of the inside host's own packet to that peer pick another port: two easy NATs could
then never punch through. Dropping the packet in prerouting, before conntrack confirms the new
entry, leaves no entry behind. The drop runs just after dstnat so that a port forward (a
port-mapping router's DNAT, lab/miniupnpd.py) still lets its packets in, as a home router does.
"""

from __future__ import annotations

import enum


class NatKind(enum.Enum):
    EASY = "easy"
    HARD = "hard"
    UDP_BLOCK = "udp_block"


def nat_ruleset(kind: NatKind, wan: str) -> str:
    """The nftables ruleset for a router whose public interface is `wan`.

    The ruleset starts by flushing itself, so loading it twice is harmless.
    """
    masq = "masquerade fully-random" if kind is NatKind.HARD else "masquerade"
    forward = "meta l4proto udp drop" if kind is NatKind.UDP_BLOCK else ""
    return f"""\
table ip meshscale_nat
delete table ip meshscale_nat
table ip meshscale_nat {{
    chain prerouting {{
        type filter hook prerouting priority -90; policy accept;
        iifname "{wan}" ct status dnat accept
        iifname "{wan}" ct state new meta l4proto udp drop
    }}
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        oifname "{wan}" {masq}
    }}
    chain forward {{
        type filter hook forward priority filter; policy accept;
        {forward}
    }}
}}
"""
