"""IPv6 LANs behind lab routers: routed prefixes, no NAT66, a stateful firewall.

A home router with IPv6 hands its LAN a global prefix and routes it; there is no address
translation, but its firewall lets in only what answers traffic from inside (conntrack
established/related) and drops the rest, as RFC 6092 recommends. Two hosts behind two such
routers reach each other directly once both have sent to the other: each side's first packet
opens its own firewall for the reply (disco pings do exactly that).

    enable_v6_lan(router)        # lan0 gets 2001:db8:1nn::1/64, forwarding, the firewall
    add_v6_host(host)            # a private host behind it gets 2001:db8:1nn::<k>/64

The n-th router's LAN is 2001:db8:<0x100+n>::/64 (RFC 3849 documentation space, like the lab
internet 2001:db8:1::/64). The lab internet's gateway namespace routes each such prefix to its
router's WAN address; it has no interface other than the bridge, so nothing leaves the lab.
The IPv4 side of the router (its NatKind) is untouched: a HARD IPv4 NAT with an IPv6 LAN is
the "only IPv6 goes direct" case of issue #18.
"""

from __future__ import annotations

from ipaddress import IPv6Address, IPv6Network

from meshscale.lab import netns
from meshscale.lab.lab import Host, Router

V6_LAN_BASE = 0x100  # the n-th router's LAN is 2001:db8:<0x100+n>::/64
FIREWALL_TABLE = "meshscale_fw6"


def lan_prefix(router: Router) -> IPv6Network:
    """The IPv6 prefix of `router`'s LAN (from its IPv4 LAN number n in 10.n.0.0/24)."""
    n = router.lan.network_address.packed[1]
    return IPv6Network(f"2001:db8:{V6_LAN_BASE + n:x}::/64")


def firewall_ruleset(wan: str) -> str:
    """nftables for a router's IPv6 forwarding: replies in, unsolicited inbound dropped.

    ICMPv6 errors that belong to a flow (packet too big, unreachable, ...) come in as
    `related`; nothing else from the WAN reaches the LAN. Outbound is free.
    """
    return f"""\
table ip6 {FIREWALL_TABLE}
delete table ip6 {FIREWALL_TABLE}
table ip6 {FIREWALL_TABLE} {{
    chain forward {{
        type filter hook forward priority filter; policy accept;
        iifname "{wan}" ct state established,related accept
        iifname "{wan}" counter drop
    }}
}}
"""


def enable_v6_lan(router: Router, *, firewall: bool = True) -> IPv6Network:
    """Give `router`'s LAN a routed IPv6 prefix; `firewall` adds the stateful firewall.

    Call before adding hosts with add_v6_host. Returns the prefix.
    """
    prefix = lan_prefix(router)
    inet = router.lab.internet
    netns.ns_ip(router.ns, "addr", "add", f"{prefix[1]}/{prefix.prefixlen}", "dev", "lan0", "nodad")
    netns.ns_sysctl(router.ns, "net.ipv6.conf.all.forwarding=1")
    if firewall:
        netns.ns_nft(router.ns, firewall_ruleset("eth0"))
    # The lab internet's gateway routes the prefix to the router (hosts' default route).
    netns.ns_sysctl(inet.ns, "net.ipv6.conf.all.forwarding=1")
    netns.ns_ip(inet.ns, "-6", "route", "add", str(prefix), "via", str(router.public_ip6))
    return prefix


def add_v6_host(host: Host) -> IPv6Address:
    """Give a private host (already on an enable_v6_lan router's LAN) its IPv6 address.

    The address ends in the same number as its IPv4 one (10.n.0.k -> 2001:db8:1nn::k);
    the default route goes via the router. Sets host.ip6.
    """
    router = host.behind
    if router is None:
        raise ValueError(f"{host.name} is not behind a router")
    prefix = lan_prefix(router)
    ip6 = prefix[host.ip.packed[3]]
    gw = prefix[1]
    netns.ns_ip(host.ns, "addr", "add", f"{ip6}/{prefix.prefixlen}", "dev", "eth0", "nodad")
    netns.ns_ip(host.ns, "-6", "route", "add", "default", "via", str(gw), "dev", "eth0")
    host.ip6 = ip6
    return ip6


def firewall_drops(router: Router) -> int:
    """Packets the router's IPv6 firewall has dropped so far (unsolicited inbound)."""
    res = netns.run_cmd(netns.exec_argv(router.ns, ["nft", "list", "table", "ip6", FIREWALL_TABLE]))
    for line in res.stdout.splitlines():
        if "counter packets" in line and "drop" in line:
            return int(line.split("counter packets", 1)[1].split()[0])
    return 0


__all__ = [
    "add_v6_host",
    "enable_v6_lan",
    "firewall_drops",
    "firewall_ruleset",
    "lan_prefix",
]
