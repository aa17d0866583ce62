"""``meshscale ping [-c N] [--until-direct] [--timeout D] HOST``: disco ping through magicsock.

Prints ``pong from NAME (IP) via DERP(REGION) in Xms`` or ``... via IP:PORT in Xms``. With
``--until-direct`` (the default, as upstream) it stops at the first direct pong, and exits 1
if none came within the count.
"""

from __future__ import annotations

import argparse
import time

from .common import add_bool_flag, find_peer, parse_duration, require_running, short_name
from .localclient import CLIError, LocalClient


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("ping", help="ping a peer over the tailnet's disco protocol")
    p.add_argument("-c", dest="count", type=int, default=10, help="number of pings (0 = forever)")
    add_bool_flag(p, "until-direct", True, "stop once a direct path is established")
    p.add_argument("--timeout", type=parse_duration, default=5.0, help="per-ping timeout")
    add_bool_flag(p, "verbose", False, "more output")
    p.add_argument("host", help="peer name or Tailscale IP")
    p.set_defaults(run=run)


def run(args: argparse.Namespace, client: LocalClient) -> int:
    if args.count < 0:
        raise CLIError("-c must be >= 0")
    if not 0 < args.timeout <= 30:
        raise CLIError("--timeout must be between 0 and 30s")
    st = client.get("status")
    require_running(st)
    peer = find_peer(st, args.host)
    ip = str((peer.get("TailscaleIPs") or [""])[0])
    name = short_name(peer)
    n = 0
    while args.count == 0 or n < args.count:
        n += 1
        t0 = time.monotonic()
        res = client.post("ping", query={"ip": ip, "timeout": f"{args.timeout:g}"},
                          timeout=args.timeout + 5)  # fmt: skip
        last = args.count != 0 and n >= args.count
        if res.get("Err"):
            print(f"ping {ip!r} {res['Err']}")
            if not last:
                time.sleep(max(0.0, 1.0 - (time.monotonic() - t0)))
            continue
        ms = float(res.get("LatencySeconds") or 0) * 1000
        if res.get("Endpoint"):
            via = str(res["Endpoint"])
        else:
            via = f"DERP({res.get('DERPRegionCode') or res.get('DERPRegionID')})"
        who = f"{res.get('NodeName') or name} ({res.get('NodeIP') or ip})"
        print(f"pong from {who} via {via} in {ms:.0f}ms")
        if res.get("Endpoint") and args.until_direct:
            return 0
        if not last:
            time.sleep(max(0.0, 1.0 - (time.monotonic() - t0)))
    if args.until_direct:
        raise CLIError("direct connection not established")
    return 0
