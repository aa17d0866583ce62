"""A lab router that answers NAT-PMP, PCP and UPnP IGD: Debian's miniupnpd-nftables.

What it takes to make miniupnpd work on a lab router:

- Its nftables chains must exist before it starts (Debian ships ``nft_init.sh`` without the
  ``miniupnpd_functions.sh`` it sources): table ``inet filter`` with ``miniupnpd`` (jumped to
  from ``forward``), ``prerouting_miniupnpd`` and ``postrouting_miniupnpd`` (from nat hooks).
- It refuses the lab's reserved "public" range unless ``ext_perform_stun=yes`` lets it learn
  that the address is really its own: so a STUN server runs on a public host (``stun`` below).
- The router's own STUN requests must keep their source ports. A hard lab NAT masquerades
  ``fully-random`` everything leaving its WAN, the router's own packets included; miniupnpd then
  sees a different port per request, concludes it sits behind a symmetric NAT and disables port
  forwarding (every MAP/AddPortMapping fails: "Port forwarding is now disabled"). A nat chain that
  runs before the masquerade snats the router's own traffic to its own address, port kept.

Also: ``python -m meshscale.lab.miniupnpd stun --port N`` (a STUN server) and
``python -m meshscale.lab.miniupnpd map --port N [--hold S]`` (our port-mapping driver, once:
map, keep it S seconds, release; JSON out).
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import socket
import time
from pathlib import Path

from meshscale import stun as stun_codec

from .lab import Host, Router
from .netns import LabError, ns_nft
from .proc import Proc

MINIUPNPD = "/usr/sbin/miniupnpd"
STUN_PORT = 3478

CHAINS = """\
table inet filter {
    chain miniupnpd {
    }
    chain prerouting_miniupnpd {
    }
    chain postrouting_miniupnpd {
    }
    chain forward {
        type filter hook forward priority 0; policy accept;
        jump miniupnpd
    }
    chain prerouting {
        type nat hook prerouting priority -100; policy accept;
        jump prerouting_miniupnpd
    }
    chain postrouting {
        type nat hook postrouting priority 100; policy accept;
        jump postrouting_miniupnpd
    }
}
"""


def own_traffic_ruleset(public_ip: ipaddress.IPv4Address, wan: str = "eth0") -> str:
    """Keep the router's own source ports (see the module docstring)."""
    return f"""\
table ip meshscale_upnp_own
delete table ip meshscale_upnp_own
table ip meshscale_upnp_own {{
    chain postrouting {{
        type nat hook postrouting priority 50; policy accept;
        oifname "{wan}" ip saddr {public_ip} snat to {public_ip}
    }}
}}
"""


def config(router: Router, stun: Host, stun_port: int = STUN_PORT) -> str:
    return f"""\
ext_ifname=eth0
listening_ip=lan0
enable_natpmp=yes
enable_upnp=yes
secure_mode=yes
system_uptime=yes
ext_perform_stun=yes
ext_stun_host={stun.ip}
ext_stun_port={stun_port}
uuid=3d3cec3a-8cf0-11e0-98ee-001a6bd2d07b
allow 1024-65535 {router.lan} 1024-65535
deny 0-65535 0.0.0.0/0 0-65535
"""


def start_stun(host: Host, port: int = STUN_PORT) -> Proc:
    import sys

    p = host.spawn([sys.executable, "-m", "meshscale.lab.miniupnpd", "stun", "--port", str(port)],
                   log_name=f"stun-{host.name}")  # fmt: skip
    _wait_log(p, "ready", 10.0)
    return p


def start_miniupnpd(router: Router, stun: Host, stun_port: int = STUN_PORT) -> Proc:
    """Start miniupnpd on ``router``; returns once it listens for NAT-PMP/PCP."""
    ns_nft(router.ns, CHAINS)
    ns_nft(router.ns, own_traffic_ruleset(router.public_ip))
    conf = router.lab.workdir / f"miniupnpd-{router.name}.conf"
    conf.write_text(config(router, stun, stun_port))
    # Its own pidfile: the default /var/run/miniupnpd.pid would make a second lab router (or a
    # parallel lab) exit with "already running".
    pid = router.lab.workdir / f"miniupnpd-{router.name}.pid"
    argv = [MINIUPNPD, "-d", "-f", str(conf), "-P", str(pid)]
    p = router.spawn(argv, log_name=f"miniupnpd-{router.name}")
    _wait_log(p, "Listening for NAT-PMP/PCP", 15.0)
    if "Port forwarding is now disabled" in p.log_text():
        raise LabError(f"miniupnpd on {router.name} disabled port forwarding:\n{p.log_text()}")
    return p


def _wait_log(p: Proc, needle: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while needle not in p.log_text():
        if not p.running or time.monotonic() > deadline:
            raise LabError(f"{needle!r} not seen:\n{p.log_text()[-2000:]}")
        time.sleep(0.05)


def _serve_stun(port: int) -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", port))
    print("ready", flush=True)
    for _ in range(1_000_000):  # bounded: a lab run sends far fewer
        data, addr = s.recvfrom(2048)
        try:
            txid = stun_codec.parse_request(data)
        except stun_codec.ParseError:
            continue
        s.sendto(stun_codec.response(txid, ipaddress.ip_address(addr[0]), addr[1]), addr)


async def _map_once(port: int, wait: float, hold: float) -> dict[str, object]:
    from meshscale.node.portmapper import PortMapperService

    got = asyncio.Event()
    seen: list[str | None] = []

    def on_mapping(addr: object) -> None:
        seen.append(None if addr is None else str(addr))
        got.set()

    svc = PortMapperService(lambda: port, on_mapping)
    svc.start()
    try:
        async with asyncio.timeout(wait):
            await got.wait()
        await asyncio.sleep(max(1.0, hold))  # slower probe answers arrive; callers may use it
    except TimeoutError:
        pass
    core = svc.core
    out: dict[str, object] = {
        "mapped": str(svc.mapped) if svc.mapped else None,
        "protocol": core.mapping.protocol.value if core and core.mapping else None,
        "have": svc.have(),
        "errors": dict(core.errors) if core else {},
    }
    await svc.stop(release=True)
    out["published"] = seen
    return out


def main() -> None:
    ap = argparse.ArgumentParser(prog="meshscale.lab.miniupnpd")
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("stun")
    s.add_argument("--port", type=int, default=STUN_PORT)
    m = sub.add_parser("map")
    m.add_argument("--port", type=int, required=True)
    m.add_argument("--wait", type=float, default=10.0)
    m.add_argument("--hold", type=float, default=0.0, help="seconds to keep the mapping")
    args = ap.parse_args()
    if args.cmd == "stun":
        _serve_stun(args.port)
    else:
        print(json.dumps(asyncio.run(_map_once(args.port, args.wait, args.hold))), flush=True)


if __name__ == "__main__":
    main()


def stun_only_region(path: Path, ip: str, region_id: int = 901, port: int = STUN_PORT) -> Path:
    """Write a DERP map file (control's ``derp.paths``) with one STUN-only region at ``ip``.

    With the control server's own region that makes two STUN addresses, so netcheck can see
    a hard NAT's mapping vary by destination (MappingVariesByDestIP), as with a real DERP
    map's many regions. A STUN-only region is never chosen as home (it relays nothing).
    """
    node = {"Name": f"{region_id}a", "RegionID": region_id, "HostName": ip, "IPv4": ip,
            "STUNPort": port, "STUNOnly": True}  # fmt: skip
    region = {"RegionID": region_id, "RegionCode": f"stun{region_id}",
              "RegionName": "lab STUN only", "Nodes": [node]}  # fmt: skip
    path.write_text(json.dumps({"regions": {str(region_id): region}}))
    return path
