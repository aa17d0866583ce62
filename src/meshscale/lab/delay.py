"""A fixed delay on chosen destinations of a private lab host, without sch_netem.

The lab kernel has neither `netem` nor NFQUEUE, so the delay is done in user space: routes
for the chosen destinations point at a TUN device; this program reads each packet from it,
holds it for the delay, and sends it out of the host's `eth0` straight to its router's MAC
(AF_PACKET, so the kernel's routing does not send it back into the TUN). Replies come back
normally; one direction delayed adds the delay to every round trip through that path, both
seen from this host and from its peer.

    add_delay(host, 0.040, [IPv6Network("2001:db8:102::/64")])   # only IPv6 to that LAN

Runs as `python -m meshscale.lab.delay --tun dly0 --dev eth0 --mac 02:..:01 --ms 40` in the
host's namespace; stopped with the lab (by PID, like every lab process).
"""

from __future__ import annotations

import argparse
import fcntl
import heapq
import json
import os
import select
import socket
import struct
import sys
import time
from collections.abc import Sequence
from ipaddress import IPv4Network, IPv6Network

from meshscale.lab import netns
from meshscale.lab.lab import Host
from meshscale.lab.proc import Proc

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
ETH_P_IP, ETH_P_IPV6 = 0x0800, 0x86DD
MAX_QUEUE = 4096  # packets held at once; past this, new ones are dropped (a bounded queue)
MAX_DELAY = 5.0  # seconds


def open_tun(name: str) -> int:
    """Attach to the (persistent) TUN device `name`; returns its file descriptor."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    return fd


def ethertype(packet: bytes) -> int | None:
    """The EtherType for a raw IP packet, from its version nibble; None if neither."""
    if not packet:
        return None
    return {4: ETH_P_IP, 6: ETH_P_IPV6}.get(packet[0] >> 4)


def run(tun: str, dev: str, mac: bytes, delay: float, *, until: float | None = None) -> int:
    """Forward packets from `tun` to `dev` after `delay` seconds; returns packets sent."""
    fd = open_tun(tun)
    out = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM)
    queue: list[tuple[float, int, bytes, int]] = []
    seq = sent = 0
    try:
        while until is None or time.monotonic() < until:
            now = time.monotonic()
            timeout = max(queue[0][0] - now, 0.0) if queue else 1.0
            ready, _, _ = select.select([fd], [], [], timeout)
            if ready:
                while len(queue) < MAX_QUEUE:
                    try:
                        pkt = os.read(fd, 65535)
                    except BlockingIOError:
                        break
                    proto = ethertype(pkt)
                    if proto is not None:
                        seq += 1
                        heapq.heappush(queue, (time.monotonic() + delay, seq, pkt, proto))
            now = time.monotonic()
            while queue and queue[0][0] <= now:
                _, _, pkt, proto = heapq.heappop(queue)
                try:
                    out.sendto(pkt, (dev, proto, 0, 0, mac))
                    sent += 1
                except OSError:
                    pass  # a full device queue drops the packet, as a link would
    finally:
        out.close()
        os.close(fd)
    return sent


def add_delay(
    host: Host,
    delay: float,
    dests: Sequence[IPv4Network | IPv6Network],
    *,
    tun: str = "dly0",
) -> Proc:
    """Delay packets from `host` (behind a router) to `dests` by `delay` seconds."""
    router = host.behind
    if router is None:
        raise ValueError(f"{host.name} is not behind a router")
    if not 0.0 < delay <= MAX_DELAY:
        raise ValueError(f"delay out of range (0, {MAX_DELAY}] s: {delay}")
    info = netns.ns_ip(router.ns, "-j", "link", "show", "dev", "lan0").stdout
    mac = str(json.loads(info)[0]["address"])
    netns.ns_ip(host.ns, "tuntap", "add", "dev", tun, "mode", "tun")
    netns.ns_ip(host.ns, "link", "set", tun, "up")
    for net in dests:
        src = host.ip6 if net.version == 6 else host.ip
        if src is None:
            raise ValueError(f"{host.name} has no IPv6 address")
        fam = "-6" if net.version == 6 else "-4"
        netns.ns_ip(host.ns, fam, "route", "add", str(net), "dev", tun, "src", str(src))
    argv = [sys.executable, "-m", "meshscale.lab.delay", "--tun", tun, "--dev", "eth0"]
    argv += ["--mac", mac, "--ms", str(round(delay * 1000))]
    return host.spawn(argv, log_name=f"delay-{host.name}")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m meshscale.lab.delay", description=__doc__)
    p.add_argument("--tun", required=True)
    p.add_argument("--dev", required=True)
    p.add_argument("--mac", required=True, help="next hop MAC, aa:bb:cc:dd:ee:ff")
    p.add_argument("--ms", type=int, required=True)
    p.add_argument("--seconds", type=float, default=None, help="exit after this long")
    a = p.parse_args(argv)
    try:
        mac = bytes.fromhex(a.mac.replace(":", ""))
    except ValueError:
        p.error(f"bad --mac {a.mac!r}")
    if len(mac) != 6:
        p.error(f"bad --mac {a.mac!r}")
    if not 0 < a.ms <= MAX_DELAY * 1000:
        p.error(f"--ms out of range: {a.ms}")
    until = None if a.seconds is None else time.monotonic() + a.seconds
    print(f"delay: {a.tun} -> {a.dev} ({a.mac}) +{a.ms} ms", flush=True)
    sent = run(a.tun, a.dev, mac, a.ms / 1000, until=until)
    print(f"delay: sent {sent}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
