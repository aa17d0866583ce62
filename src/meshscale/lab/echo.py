"""A tiny UDP/TCP "what is my address" server and its probe, for checking lab NAT behaviour.

Server: `python -m meshscale.lab.echo serve --udp PORT --tcp PORT`. Every UDP datagram and every
TCP connection gets back the peer address as the server saw it, "ip port" in ASCII.

Probe: `python -m meshscale.lab.echo probe --bind-port P --udp HOST:PORT ... --tcp HOST:PORT ...`
sends from one UDP socket bound to port P to every UDP target (retrying until an answer or the
deadline, per target) and connects to every TCP target, then prints one JSON object:
{"udp": {"HOST:PORT": "ip port" | null}, "tcp": {"HOST:PORT": "ip port" | null}}.

Punch: `python -m meshscale.lab.echo punch --bind-port P --peer HOST:PORT --timeout T` sends to
the peer every RETRY_INTERVAL from port P and prints {"from": "ip port" | null}: the first
address a datagram arrived from. Run on both sides at once, it is UDP hole punching.
"""

from __future__ import annotations

import argparse
import json
import selectors
import socket
import sys
import time
from collections.abc import Sequence

MAX_CONNECTIONS = 10_000  # The server exits after this many TCP connections (bounds a stray loop).
RETRY_INTERVAL = 0.2  # seconds between UDP probe retries


def _split(target: str) -> tuple[str, int]:
    host, _, port = target.rpartition(":")
    return host.strip("[]"), int(port)


def serve(udp_port: int | None, tcp_port: int | None) -> None:
    sel = selectors.DefaultSelector()
    if udp_port is not None:
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.bind(("0.0.0.0", udp_port))
        sel.register(u, selectors.EVENT_READ, "udp")
    if tcp_port is not None:
        t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        t.bind(("0.0.0.0", tcp_port))
        t.listen(64)
        sel.register(t, selectors.EVENT_READ, "tcp")
    print("ready", flush=True)
    served = 0
    while served < MAX_CONNECTIONS:
        for key, _ in sel.select():
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            if key.data == "udp":
                _, addr = sock.recvfrom(2048)
                sock.sendto(f"{addr[0]} {addr[1]}".encode(), addr)
            else:
                conn, addr = sock.accept()
                with conn:
                    conn.sendall(f"{addr[0]} {addr[1]}".encode())
                served += 1


def probe(
    bind_port: int, udp: Sequence[str], tcp: Sequence[str], timeout: float
) -> dict[str, dict[str, str | None]]:
    result: dict[str, dict[str, str | None]] = {"udp": {}, "tcp": {}}
    if udp:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("0.0.0.0", bind_port))
        with s:
            for target in udp:
                deadline = time.monotonic() + timeout
                addr = _split(target)
                answer: str | None = None
                while answer is None and time.monotonic() < deadline:
                    s.sendto(b"probe", addr)
                    s.settimeout(RETRY_INTERVAL)
                    try:
                        data, src = s.recvfrom(2048)
                    except TimeoutError:
                        continue
                    if src == addr:
                        answer = data.decode()
                result["udp"][target] = answer
    for target in tcp:
        deadline = time.monotonic() + timeout
        answer = None
        while answer is None and time.monotonic() < deadline:
            try:
                with socket.create_connection(_split(target), timeout=1.0) as c:
                    answer = c.recv(2048).decode()
            except OSError:
                time.sleep(RETRY_INTERVAL)
        result["tcp"][target] = answer
    return result


def punch(bind_port: int, peer: str, timeout: float) -> str | None:
    addr = _split(peer)
    deadline = time.monotonic() + timeout
    got: str | None = None
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("0.0.0.0", bind_port))
        s.settimeout(RETRY_INTERVAL)
        while time.monotonic() < deadline:
            s.sendto(b"punch", addr)
            if got is not None:
                # Keep sending for a moment so the other side also gets through.
                deadline = min(deadline, time.monotonic() + 1.0)
                time.sleep(RETRY_INTERVAL)
                continue
            try:
                _, src = s.recvfrom(2048)
            except TimeoutError:
                continue
            got = f"{src[0]} {src[1]}"
    return got


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m meshscale.lab.echo")
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--udp", type=int)
    s.add_argument("--tcp", type=int)
    p = sub.add_parser("probe")
    p.add_argument("--bind-port", type=int, default=0)
    p.add_argument("--udp", action="append", default=[])
    p.add_argument("--tcp", action="append", default=[])
    p.add_argument("--timeout", type=float, default=5.0)
    u = sub.add_parser("punch")
    u.add_argument("--bind-port", type=int, required=True)
    u.add_argument("--peer", required=True)
    u.add_argument("--timeout", type=float, default=5.0)
    args = ap.parse_args(argv)
    if args.cmd == "serve":
        serve(args.udp, args.tcp)
    elif args.cmd == "punch":
        json.dump({"from": punch(args.bind_port, args.peer, args.timeout)}, sys.stdout)
        print()
    else:
        json.dump(probe(args.bind_port, args.udp, args.tcp, args.timeout), sys.stdout)
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
