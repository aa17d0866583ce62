"""Small probes for a relay, usable from a shell or a lab namespace.

    python -m meshscale.relay.probe stun 203.0.113.10:3478          # prints "ip port"
    python -m meshscale.relay.probe recv URL --key-seed 01 --count 3 # prints each packet
    python -m meshscale.relay.probe send URL --key-seed 02 --to <nodekey:hex> --count 3

``--key-seed`` is one byte in hex repeated 32 times: deterministic test identities only.
``recv`` prints ``ready <nodekey>`` once logged in. Every command is bounded by ``--timeout``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys

from .. import stun
from ..derp import frames as F
from ..derphttp import DERPClient
from ..key import NodePrivate, NodePublic


def _key(seed: str) -> NodePrivate:
    return NodePrivate.generate(bytes.fromhex(seed) * 32)


async def probe_stun(target: str, wait: float) -> tuple[str, int]:
    host, _, port = target.rpartition(":")
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    loop = asyncio.get_running_loop()
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        sock.connect((host, int(port)))
        txid = os.urandom(12)
        for _ in range(3):  # UDP: a few tries
            sock.send(stun.request(txid))
            try:
                async with asyncio.timeout(wait / 3):
                    while True:
                        resp = stun.parse_response(await loop.sock_recv(sock, 1500))
                        if resp.txid == txid:
                            return str(resp.addr), resp.port
            except (TimeoutError, stun.ParseError):
                continue
    raise TimeoutError("no STUN answer")


async def recv(url: str, seed: str, count: int) -> None:
    c = DERPClient(_key(seed), url)
    await c.connect()
    print("ready", _key(seed).public().text(), flush=True)
    got = 0
    while got < count:
        ev = await c.recv()
        if isinstance(ev, F.RecvPacket):
            got += 1
            print(
                "packet", NodePublic(ev.src).text(), ev.packet.decode(errors="replace"), flush=True
            )
    await c.close()


async def send(url: str, seed: str, to: str, count: int) -> None:
    c = DERPClient(_key(seed), url)
    await c.connect()
    dst = NodePublic.from_text(to)
    for i in range(count):
        c.send(dst, f"hello {i}".encode())
    await c.drain()
    await c.close()
    print("sent", count, flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m meshscale.relay.probe")
    p.add_argument("--timeout", type=float, default=10.0)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("stun")
    s.add_argument("target")
    for name in ("recv", "send"):
        q = sub.add_parser(name)
        q.add_argument("url")
        q.add_argument("--key-seed", required=True)
        q.add_argument("--count", type=int, default=1)
        if name == "send":
            q.add_argument("--to", required=True)
    a = p.parse_args(argv)

    async def run() -> None:
        async with asyncio.timeout(a.timeout):
            if a.cmd == "stun":
                ip, port = await probe_stun(a.target, a.timeout)
                print(ip, port, flush=True)
            elif a.cmd == "recv":
                await recv(a.url, a.key_seed, a.count)
            else:
                await send(a.url, a.key_seed, a.to, a.count)

    try:
        asyncio.run(run())
    except (TimeoutError, OSError, ValueError) as exc:
        print(f"probe failed: {exc!r}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
