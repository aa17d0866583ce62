"""Offload benchmarks: per-packet cost of GSO split, GRO coalesce and checksums, UDP batching,
and TUN<->TUN forwarder throughput with offloads on and off.

    .venv/bin/python benchmarks/bench_offload.py [--seconds 3] [--micro-only]

The forwarder part needs root: it builds a lab (two namespaces), joins two TunDevices with two
threads (read_batch -> write_batch, no crypto) and runs iperf3 TCP through them. CPU figures are
process CPU time per operation (best of 5), as in docs/protocol/wireguard.md §13.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import sys
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.packet.builders import super_tcp

from meshscale.io.tun import TunDevice
from meshscale.io.udp import UDPSocket
from meshscale.packet import Coalescer, Splitter, gso_split, ones_sum, split_room
from meshscale.packet.gro import _all_valid, _Item

MSS = 1368  # TCP payload of a 1420-MTU tunnel with timestamps
SEGMENTS = 47  # a 64 KB super-packet
TS = b"\x01\x01\x08\x0a" + bytes(range(8))


def best(fn: Callable[[], object], loops: int, repeat: int = 5) -> float:
    """Best process-CPU seconds per call of fn."""
    times = []
    for _ in range(repeat):
        t = time.process_time()
        for _ in range(loops):
            fn()
        times.append((time.process_time() - t) / loops)
    return min(times)


def _splitter(arena: bytearray, frame_len: int, native: bool = True) -> Callable[[], object]:
    sp = Splitter(arena)
    sp.native = sp.native and native  # False: the numpy/Python rows (the baseline)
    out: list[memoryview] = []

    def split() -> None:
        out.clear()
        sp.split(0, frame_len, frame_len, out)

    return split


def micro() -> dict[str, float]:
    r: dict[str, float] = {}
    for v6 in (False, True):
        frame = super_tcp(os.urandom(MSS * SEGMENTS), MSS, v6=v6, options=TS)
        arena = bytearray(len(frame) + split_room(len(frame)))
        arena[: len(frame)] = frame
        for native in (False, True):
            split = _splitter(arena, len(frame), native)
            rows = "C rows" if native else "numpy rows"
            r[f"split tcp{'6' if v6 else '4'} {rows} us/segment"] = (
                best(split, 300) / SEGMENTS * 1e6
            )
        segs, _ = gso_split(frame)
        for verify in (True, False):
            c = Coalescer(verify_checksums=verify)
            r[f"coalesce tcp{'6' if v6 else '4'} verify={verify} us/packet"] = (
                best(partial(c.coalesce, segs), 300) / SEGMENTS * 1e6
            )
    for nseg in (2, 4, 8):
        frame = super_tcp(os.urandom(MSS * nseg), MSS, options=TS)
        arena = bytearray(len(frame) + split_room(len(frame)))
        arena[: len(frame)] = frame
        for native in (False, True):
            rows = "C rows" if native else "Python rows"
            r[f"split tcp4 {nseg}-segment frame, {rows} us/segment"] = (
                best(_splitter(arena, len(frame), native), 1000) / nseg * 1e6
            )
    pkt = os.urandom(1388)
    r["ones_sum int.from_bytes 1388 B us"] = best(lambda: ones_sum(pkt), 20000) * 1e6
    segs, _ = gso_split(super_tcp(os.urandom(MSS * SEGMENTS), MSS, options=TS))
    item = _Item(segs[0], [], 20, 52, MSS, True, 0, 0, b"")
    item.pkts = list(segs)
    r["batched numpy checksum verify us/packet"] = (
        best(lambda: _all_valid([item]), 500) / len(segs) * 1e6
    )
    r.update(udp_micro())
    return r


def udp_micro() -> dict[str, float]:
    r: dict[str, float] = {}
    msgs = [[bytes(16), os.urandom(1436)] for _ in range(64)]
    with UDPSocket.bind("127.0.0.1", 0) as rx, UDPSocket.bind("127.0.0.1", 0) as tx:
        dst = rx.getsockname()
        for gso in (True, False):
            tx.gso = gso
            n = 0
            t_send = t_recv = 0.0
            for _ in range(200):
                t = time.process_time()
                tx.send_batch(dst, msgs)
                t_send += time.process_time() - t
                t = time.process_time()
                got = 0
                while got < 64:
                    got += len(rx.recv_batch())
                t_recv += time.process_time() - t
                n += 64
            label = "gso/gro" if gso else "plain send/gro recv"
            r[f"udp loopback {label} send us/datagram"] = t_send / n * 1e6
            r[f"udp loopback {label} recv us/datagram"] = t_recv / n * 1e6
    return r


class RawForwarder:
    """Reference ceiling: frames (vnet header + super-packet) copied fd to fd, untouched."""

    def __init__(self, a: TunDevice, b: TunDevice) -> None:
        self.fds = (a.fileno(), b.fileno())
        self.stop = os.pipe()
        self.threads = [
            threading.Thread(target=self._pump, args=(self.fds[0], self.fds[1]), daemon=True),
            threading.Thread(target=self._pump, args=(self.fds[1], self.fds[0]), daemon=True),
        ]

    def _pump(self, src: int, dst: int) -> None:
        poll = select.poll()
        poll.register(src, select.POLLIN)
        poll.register(self.stop[0], select.POLLIN)
        buf = bytearray(70000)
        mv = memoryview(buf)
        while True:
            try:
                n = os.readv(src, [buf])
            except BlockingIOError:
                if any(fd == self.stop[0] for fd, _ in poll.poll()):
                    return
                continue
            with contextlib.suppress(OSError):
                os.write(dst, mv[:n])

    def __enter__(self) -> RawForwarder:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        os.write(self.stop[1], b"x")
        for t in self.threads:
            t.join(5)
        os.close(self.stop[0])
        os.close(self.stop[1])


def forwarder(seconds: float) -> dict[str, float]:
    from tests.io.harness import Forwarder, open_tun_side

    from meshscale.lab import Lab

    results: dict[str, float] = {}
    modes = [("plain", False, {}), ("offload", True, {}),
             ("offload, no GRO verify", True, {"gro_verify": False}),
             ("raw super-packet passthrough (ceiling)", True, {})]  # fmt: skip
    for label, offload, kw in modes:
        fwd_cls = RawForwarder if label.startswith("raw") else Forwarder
        with Lab(hint="bof") as lab:
            ha, hb = lab.add_public_host("a"), lab.add_public_host("b")
            a = open_tun_side(ha.ns, "msb0", 1, offload, **kw)
            b = open_tun_side(hb.ns, "msb0", 2, offload, **kw)
            with fwd_cls(a.tun, b.tun):
                srv = hb.spawn(["iperf3", "-s", "-1", "-B", b.ip4], log_name="iperf3-s")
                time.sleep(0.3)
                t0 = os.times()
                out = ha.run(
                    ["iperf3", "-J", "-c", b.ip4, "-t", str(seconds)], timeout=seconds + 20
                ).stdout
                t1 = os.times()
                srv.wait(10)
                st_a, st_b = a.tun.statistics(), b.tun.statistics()
            bps = json.loads(out)["end"]["sum_received"]["bits_per_second"]
            cpu = (t1.user - t0.user) + (t1.system - t0.system)
            results[f"forwarder {label} Gbit/s"] = bps / 1e9
            results[f"forwarder {label} CPU s per s"] = cpu / seconds
            # Robust to a busy machine: forwarder CPU (user + kernel) per GB moved A -> B.
            results[f"forwarder {label} CPU s per GB"] = cpu / (bps * seconds / 8e9)
            results[f"forwarder {label} packets per read"] = st_a.packets_read / max(st_a.reads, 1)
            results[f"forwarder {label} packets per write"] = st_b.packets_written / max(
                st_b.writes, 1
            )
    return results


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--micro-only", action="store_true")
    args = ap.parse_args()
    res = micro()
    if not args.micro_only:
        if os.geteuid() != 0:
            print("forwarder benchmark skipped: needs root")
        else:
            res.update(forwarder(args.seconds))
    width = max(map(len, res))
    for k, v in res.items():
        print(f"{k:<{width}}  {v:8.3f}")
    if "forwarder plain Gbit/s" in res:
        base = res["forwarder plain Gbit/s"]
        for label in (
            "offload",
            "offload, no GRO verify",
            "raw super-packet passthrough (ceiling)",
        ):
            print(f"ratio {label} / plain: {res[f'forwarder {label} Gbit/s'] / base:.2f}x")


if __name__ == "__main__":
    main()
