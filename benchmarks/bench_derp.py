"""DERP relay benchmark over loopback: relayed throughput and packets/s vs raw TCP, and idle
connections held (toward 10,000) with the relay's RSS per connection.

    .venv/bin/python benchmarks/bench_derp.py                 # everything, default sizes
    .venv/bin/python benchmarks/bench_derp.py --idle 2000 --seconds 3
    .venv/bin/python benchmarks/bench_derp.py --idle 0 --rounds 3   # throughput, 3 pairs each

The relay runs as a separate process (``meshscale-derp -dev``), as in production; the clients
run in this process. The raw-TCP baseline sends the same payloads, with the same 5-byte
framing, from one socket to another in this process, in the same run (the same asyncio
stream reader and writer, read size, bursts and frame counter as the relayed lean clients).
Each run also prints the bench process's own CPU per packet: both runs are usually bounded by
this process (one core), so a ratio below 1 partly measures its extra cost per packet when the
bytes come from another process (another core's cache, epoll wake-ups) rather than the relay.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

from meshscale.derp import frames as F
from meshscale.derphttp import DERPClient
from meshscale.key import NodePrivate


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def self_cpu() -> float:
    """User + system CPU time of this process (the bench's clients) so far."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 1 << 20
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    except (ValueError, OSError):
        return soft
    return want


class FrameCounter:
    """Counts complete frames of one type in a byte stream by walking the 5-byte headers,
    without copying payloads: the receiving end of both the raw-TCP baseline and the lean
    relayed run, so that the two differ only by the relay in between."""

    def __init__(self, ftype: int) -> None:
        self.ftype = ftype
        self.count = 0
        self._hdr = bytearray()
        self._skip = 0  # payload bytes of the current frame still to come
        self._cur = -1

    def feed(self, data: bytes) -> None:
        i, n = 0, len(data)
        while i < n:
            if self._skip:
                take = min(self._skip, n - i)
                self._skip -= take
                i += take
                if not self._skip and self._cur == self.ftype:
                    self.count += 1
                continue
            take = min(F.FRAME_HEADER_LEN - len(self._hdr), n - i)
            self._hdr += data[i : i + take]
            i += take
            if len(self._hdr) == F.FRAME_HEADER_LEN:
                self._cur = self._hdr[0]
                self._skip = int.from_bytes(self._hdr[1:], "big")
                self._hdr.clear()
                if not self._skip and self._cur == self.ftype:
                    self.count += 1


def start_relay(port: int) -> subprocess.Popen[bytes]:
    code = (
        "import resource,sys;"
        "s,h=resource.getrlimit(resource.RLIMIT_NOFILE);"
        "resource.setrlimit(resource.RLIMIT_NOFILE,(h,h));"
        "from meshscale.relay.main import main;"
        f"sys.exit(main(['-dev','-a','127.0.0.1:{port}','-stun=false']))"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.DEVNULL)
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("relay did not start")


async def relayed(
    url: str, size: int, seconds: float, lean: bool = False
) -> tuple[float, float, int, int]:
    """(packets/s, MB/s, sent, received) from A to B through the relay.

    With ``lean`` the two clients log in with DERPClient and then write pre-encoded frames
    and count received frames without decoding them, so the relay, not the Python client
    library, is the bottleneck being measured.
    """
    a = DERPClient(NodePrivate.generate(os.urandom(32)), url)
    b_key = NodePrivate.generate(os.urandom(32))
    b = DERPClient(b_key, url)
    await a.connect()
    await b.connect()
    payload = bytes(size)
    received = 0

    async def receiver() -> None:
        nonlocal received
        if lean:
            fc = FrameCounter(F.FrameType.RECV_PACKET)
            reader = b._stream  # the bench reads the raw stream after login
            assert reader is not None
            while data := await reader.read(1 << 18):
                fc.feed(data)
                received = fc.count
        while True:
            received += sum(isinstance(ev, F.RecvPacket) for ev in await b.recv_many())

    rt = asyncio.create_task(receiver())
    sent = 0
    dst = b_key.public()
    start = time.perf_counter()
    end = start + seconds
    # About 64 KiB per burst between drains, like a windowed sender (the WireGuard traffic
    # DERP carries is paced by the TCP inside it); DERP drops what a receiver cannot take.
    burst = min(64, max(4, 65536 // size))
    frames: list[bytes | memoryview] = [F.send_packet(dst.raw, payload)] * burst
    while time.perf_counter() < end:
        if lean:
            a.write_raw(frames)
        else:
            for _ in range(burst):
                a.send(dst, payload)
        sent += burst
        await a.drain()
        await asyncio.sleep(0)
    # Let the tail arrive (bounded).
    for _ in range(200):
        if received >= sent:
            break
        await asyncio.sleep(0.01)
    elapsed = time.perf_counter() - start
    rt.cancel()
    await a.close()
    await b.close()
    return received / elapsed, received * size / elapsed / 1e6, sent, received


async def raw_tcp(size: int, seconds: float) -> tuple[float, float]:
    """(packets/s, MB/s) of framed payloads over one loopback TCP connection."""
    fc = FrameCounter(F.FrameType.SEND_PACKET)
    finished = asyncio.Event()

    async def on_conn(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while data := await r.read(1 << 18):
            fc.feed(data)
        w.close()
        finished.set()

    srv = await asyncio.start_server(on_conn, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    _, w = await asyncio.open_connection("127.0.0.1", port)
    frame = F.send_packet(bytes(32), bytes(size))
    start = time.perf_counter()
    end = start + seconds
    burst = min(64, max(4, 65536 // size))
    while time.perf_counter() < end:
        w.writelines([frame] * burst)
        await w.drain()
        await asyncio.sleep(0)
    w.close()
    await asyncio.wait_for(finished.wait(), 10)
    elapsed = time.perf_counter() - start
    srv.close()
    return fc.count / elapsed, fc.count * size / elapsed / 1e6


async def idle(url: str, pid: int, target: int, step: int) -> list[tuple[int, int]]:
    """Open ``target`` logged-in idle clients; (connections, relay RSS KiB) at each step."""
    base = rss_kib(pid)
    points = [(0, base)]
    clients: list[DERPClient] = []
    sem = asyncio.Semaphore(100)

    async def one() -> DERPClient | None:
        async with sem:
            c = DERPClient(NodePrivate.generate(os.urandom(32)), url, connect_timeout=30)
            try:
                await c.connect()
                return c
            except (OSError, TimeoutError) as exc:
                print(f"  connect failed: {exc!r}")
                return None

    while len(clients) < target:
        n = min(step, target - len(clients))
        got = await asyncio.gather(*(one() for _ in range(n)))
        ok = [c for c in got if c is not None]
        clients.extend(ok)
        await asyncio.sleep(0.5)
        points.append((len(clients), rss_kib(pid)))
        print(f"  {len(clients):6d} idle clients: relay RSS {points[-1][1] / 1024:.1f} MiB")
        if len(ok) < n:
            break
    for c in clients:
        await c.close()
    return points


async def amain(args: argparse.Namespace) -> None:
    limit = raise_nofile()
    port = free_port()
    relay = start_relay(port)
    url = f"http://127.0.0.1:{port}/derp"
    try:
        print(f"relay pid {relay.pid}, fd limit {limit}, {os.cpu_count()} CPUs")
        for size in args.sizes:
            ratios: list[float] = []
            # Rounds alternate the baseline and the relayed run, so a change in the machine's
            # load (shared cores) hits both alike; the summary is over the rounds.
            for rnd in range(args.rounds):
                # The bench's own CPU (its clients' share) is printed for both runs: if the
                # bench were busier per packet when relaying, the ratio would measure it.
                b0, t0 = self_cpu(), time.perf_counter()
                rpps, rmbs = await raw_tcp(size, args.seconds)
                bcpu, wall = self_cpu() - b0, time.perf_counter() - t0
                print(
                    f"size {size:5d} B  raw TCP        {rpps:9.0f} pkt/s {rmbs:8.1f} MB/s"
                    f"  bench CPU {1e6 * bcpu / max(rpps * wall, 1):5.2f} us/pkt"
                    f" ({bcpu / wall:.2f} core)"
                )
                for lean in (False, True) if rnd == 0 else (True,):
                    cpu0, b0, t0 = cpu_seconds(relay.pid), self_cpu(), time.perf_counter()
                    pps, mbs, sent, recv = await relayed(url, size, args.seconds, lean)
                    cpu = cpu_seconds(relay.pid) - cpu0
                    bcpu, wall = self_cpu() - b0, time.perf_counter() - t0
                    loss = 100 * (1 - recv / sent) if sent else 0.0
                    label = "relayed (lean)" if lean else "relayed (lib) "
                    if lean:
                        ratios.append(mbs / rmbs)
                    print(
                        f"size {size:5d} B  {label} {pps:9.0f} pkt/s {mbs:8.1f} MB/s"
                        f"  {100 * mbs / rmbs:5.1f}% of raw  loss {loss:4.1f}%"
                        f"  relay CPU {1e6 * cpu / max(recv, 1):5.2f} us/pkt"
                        f" ({cpu / wall:.2f} core)  bench CPU {1e6 * bcpu / max(recv, 1):5.2f}"
                        f" us/pkt ({bcpu / wall:.2f} core)"
                    )
            if len(ratios) > 1:
                print(
                    f"size {size:5d} B  relayed (lean) / raw TCP over {len(ratios)} rounds:"
                    f" median {statistics.median(ratios):.2f}x,"
                    f" min {min(ratios):.2f}x, max {max(ratios):.2f}x"
                )
        if args.idle:
            target = min(args.idle, limit - 200)  # the relay is another process
            points = await idle(url, relay.pid, target, args.step)
            n, rss = points[-1]
            if n:
                per = (rss - points[0][1]) / n
                print(f"idle: {n} connections held, {per:.1f} KiB RSS per connection")
    finally:
        relay.terminate()
        relay.wait(5)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--rounds", type=int, default=1, help="baseline/relayed pairs per size")
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 1280, 16000])
    p.add_argument("--idle", type=int, default=10000)
    p.add_argument("--step", type=int, default=2000)
    asyncio.run(amain(p.parse_args()))


if __name__ == "__main__":
    main()
