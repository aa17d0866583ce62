"""Hardening benchmark (issue #12): unauthenticated load against a control server while
registered nodes keep their map streams. Loopback only, bounded in count and time.

The server (build_app on an SQLite file, plain HTTP on 127.0.0.1, default NoiseLimits) runs
as a separate process. This process first joins NODES clients (pre-auth key, map stream),
then, at once:

- holds UNAUTH unauthenticated ts2021 connections (fresh machine keys, real Noise handshake,
  HTTP/2) from 16 source addresses 127.0.0.2-17; every other one also starts a request body
  it never finishes; a connection the server closes (deadline) or refuses (cap) is retried;
- sends JUNK interactive registrations, each from a fresh machine key on its own connection,
  from 64 source addresses 127.0.1.x;
- once a second, one node posts a lite endpoint update and we time until every other node
  has the PeersChangedPatch (the figure that must stay under 1 s);
- polls /health every 0.2 s (1 s timeout) and samples the server's RSS and its NoiseGate
  counters every 0.5 s.

    .venv/bin/python benchmarks/bench_hardening.py                       # 200 / 1000 / 10000
    .venv/bin/python benchmarks/bench_hardening.py --nodes 50 --unauth 200 --junk 1000
    .venv/bin/python benchmarks/bench_hardening.py --watchdog /tmp/wd.json   # profile

``--watchdog FILE`` makes the server time every event-loop callback (those over 20 ms are
kept by name) and sample its loop thread's stack whenever the loop has not run a 20 ms
heartbeat for 100 ms, with the thread's CPU time in each such stall (a stall with little
CPU is the machine's doing, not the server's); the report goes to FILE at the end.

Prints one JSON object; the README keeps the figures. Exit status 1 when a budget is missed
(RSS over --rss-budget-mib, a change delayed past 1 s, or a failed /health).
Not a test: run by hand.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import random
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from procstat import cpu_seconds, free_port, rss_kib

from meshscale.controlbase import ClientConn, ClientHandshake, EarlyPayloadReader
from meshscale.controlhttp import H2Client, NoiseStream
from meshscale.io.stream import RawStream
from meshscale.key import MachinePrivate, MachinePublic, NodePrivate
from meshscale.tailcfg import CURRENT_CAPABILITY_VERSION
from meshscale.testing.controlclient import ControlClient, MapStream, http_get

TIME_CAP = 600.0  # seconds for the whole attack phase, whatever the counts


# ---- server side (a child process) --------------------------------------------------------


class Watchdog:
    """Samples the event loop thread's stack while the loop has not run its heartbeat for
    more than ``stall`` seconds: what blocks it. ``report()``: stacks by sampled seconds."""

    def __init__(self, stall: float = 0.1, every: float = 0.02) -> None:
        self.stall, self.every = stall, every
        self.beat = time.monotonic()
        self.samples: dict[str, float] = {}
        self.stalls = 0
        self._ident = threading.get_ident()
        self._cpu_clock = time.pthread_getcpuclockid(self._ident)
        self.worst: list[tuple[float, float, int]] = []  # (stall s, loop CPU s in it, ready)
        self.slow: dict[str, list[float]] = {}  # callback -> [count, total s, max s]
        self._loop: asyncio.AbstractEventLoop | None = None

    def time_callbacks(self, over: float = 0.02) -> None:
        """Time every callback the loop runs; keep those over ``over`` seconds."""
        run = asyncio.events.Handle._run
        slow = self.slow

        def timed(h: asyncio.Handle) -> None:
            t0 = time.perf_counter()
            run(h)
            dt = time.perf_counter() - t0
            if dt > over:
                cb = getattr(h, "_callback", None)
                owner = getattr(cb, "__self__", None)
                coro = getattr(owner, "get_coro", lambda: None)()
                name = getattr(coro, "__qualname__", None) or repr(cb)[:80]
                e = slow.setdefault(name, [0, 0.0, 0.0])
                e[0] += 1
                e[1] += dt
                e[2] = max(e[2], dt)

        asyncio.events.Handle._run = timed  # type: ignore[method-assign]

    async def heartbeat(self) -> None:
        while True:
            self.beat = time.monotonic()
            await asyncio.sleep(self.every)

    def start(self) -> None:
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        stalled, cpu0, ready, worst = False, 0.0, 0, 0.0
        while True:
            time.sleep(self.every)
            late = time.monotonic() - self.beat
            if late <= self.stall:
                if stalled:
                    cpu = time.clock_gettime(self._cpu_clock) - cpu0
                    self.worst.append((round(worst, 3), round(cpu, 3), ready))
                    self.worst = sorted(self.worst, reverse=True)[:20]
                stalled = False
                continue
            if not stalled:
                self.stalls += 1
                stalled, cpu0, ready = True, time.clock_gettime(self._cpu_clock), 0
            worst = late
            if self._loop is not None:
                ready = max(ready, len(getattr(self._loop, "_ready", ())))
            frame = sys._current_frames().get(self._ident)
            if frame is None:
                continue
            stack = [f"{Path(f.filename).name}:{f.lineno}:{f.name}"
                     for f in traceback.extract_stack(frame)[-14:]]  # fmt: skip
            key = " < ".join(reversed(stack))
            self.samples[key] = self.samples.get(key, 0.0) + self.every

    def report(self, top: int = 25) -> dict[str, Any]:
        items = sorted(self.samples.items(), key=lambda kv: -kv[1])[:top]
        slow = sorted(self.slow.items(), key=lambda kv: -kv[1][1])[:top]
        return {"stalls": self.stalls, "worst": self.worst,
                "slow_callbacks": [[n, round(t, 2), round(m, 3), k] for k, (n, t, m) in slow],
                "top": [[round(v, 2), k] for k, v in items]}  # fmt: skip


async def serve(port: int, db: str, unauth_rate: float, watchdog: str = "") -> None:
    from meshscale.control.app import AppSettings, build_app
    from meshscale.control.state import State
    from meshscale.controlhttp import NoiseLimits
    from meshscale.io.http import HTTPServer, Request, Response
    from meshscale.tailcfg import DERPMap, DERPNode, DERPRegion

    state = State.open(db)
    user = state.create_user("bench")
    secret = state.create_preauth_key(user.id, reusable=True).secret
    derp = DERPMap(Regions={900: DERPRegion(900, "b", "Bench", Nodes=[DERPNode("900a", 900, "d")])})
    key = MachinePrivate(os.urandom(32))
    limits = NoiseLimits(unauth_rate=unauth_rate) if unauth_rate else NoiseLimits()
    app = build_app(state, AppSettings(server_url=f"http://127.0.0.1:{port}"), derp,
                    control_key=key, limits=limits)  # fmt: skip

    lag = {"max_ms": 0.0}

    async def lag_monitor() -> None:  # how late the server's event loop runs a 0.1 s timer
        loop = asyncio.get_running_loop()
        while True:
            t0 = loop.time()
            await asyncio.sleep(0.1)
            lag["max_ms"] = max(lag["max_ms"], (loop.time() - t0 - 0.1) * 1000)

    # client port -> [[accepted, handled], ...] (monotonic; a port is reused over a run)
    seen: dict[int, list[list[float]]] = {}

    async def health(req: Request) -> Response:
        if req.client is not None:
            runs = seen.setdefault(req.client[1], [[0.0, 0.0]])
            if runs[-1][1]:
                runs.append([0.0, 0.0])
            runs[-1][1] = time.monotonic()
        return Response.json_bytes(b'{"status":"pass"}')

    async def health_log(req: Request) -> Response:
        return Response.json_bytes(json.dumps(seen).encode())

    async def stats(req: Request) -> Response:
        out: dict[str, Any] = dict(app.noise.gate.stats())
        out["pending_registrations"] = len(state.list_registrations())
        out["register_429"] = app.register.buckets.rejected
        out["loop_lag_max_ms"] = int(lag["max_ms"])
        return Response.json_bytes(json.dumps(out).encode())

    app.router.add("GET", "/health", health)
    app.router.add("GET", "/bench-stats", stats)
    app.router.add("GET", "/bench-health-log", health_log)
    server = HTTPServer(app.router, accept_filter=app.noise.accept)
    on_connect = server._on_connect

    async def timed_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        if isinstance(peer, tuple) and peer[0] == "127.0.0.1" and len(seen) < 100_000:
            seen.setdefault(int(peer[1]), []).append([time.monotonic(), 0.0])
        await on_connect(reader, writer)

    server._on_connect = timed_connect  # type: ignore[method-assign]
    await server.start("127.0.0.1", port)
    await app.start()
    lag_task = asyncio.ensure_future(lag_monitor())
    dog = Watchdog() if watchdog else None
    if dog is not None:
        beat = asyncio.ensure_future(dog.heartbeat())
        dog._loop = asyncio.get_running_loop()
        dog.time_callbacks()
        dog.start()

        def dump(*_: object) -> None:
            Path(watchdog).write_text(json.dumps(dog.report(), indent=1))

        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, dump)
    print(json.dumps({"key": key.public().text(), "authkey": secret}), flush=True)
    await asyncio.Event().wait()
    lag_task.cancel()
    if dog is not None:
        beat.cancel()


# ---- attackers ------------------------------------------------------------------------------


async def raw_dial(port: int, control_key: MachinePublic, source: str) -> H2Client:
    """/ts2021 with a fresh machine key from ``source``; raises on refusal."""
    hs = ClientHandshake(MachinePrivate(os.urandom(32)), control_key,
                         CURRENT_CAPABILITY_VERSION, os.urandom(32))  # fmt: skip
    noise = ClientConn(hs, control_key)
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    try:
        init = base64.b64encode(noise.initiation).decode()
        writer.write(
            f"POST /ts2021 HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            "Upgrade: tailscale-control-protocol\r\nConnection: upgrade\r\n"
            f"X-Tailscale-Handshake: {init}\r\nContent-Length: 0\r\n\r\n".encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 101"):
            raise ConnectionRefusedError(head.split(b"\r\n", 1)[0].decode())
        raw = RawStream(reader, writer)
        early = EarlyPayloadReader()
        initial = b""
        while noise.conn is None or not early.done:
            data = await raw.read(65536)
            if not data:
                raise ConnectionError("closed during handshake")
            initial += early.feed(noise.receive_data(data))
    except BaseException:
        writer.close()
        raise
    client = H2Client(raw, NoiseStream(raw, noise.conn), f"127.0.0.1:{port}", early.payload)
    client.start_connection(initial)
    return client


@dataclass
class Tally:
    held_max: int = 0
    held: int = 0
    refused: int = 0
    closed_by_server: int = 0
    junk: dict[str, int] = field(default_factory=dict)
    health_ok: int = 0
    health_fail: int = 0
    health_max_ms: float = 0.0
    change_ms: list[float] = field(default_factory=list)
    rss_max_kib: int = 0
    gate_max: dict[str, int] = field(default_factory=dict)
    probes: list[dict[str, Any]] = field(default_factory=list)
    own_lag: list[tuple[float, float]] = field(default_factory=list)
    backlog: list[tuple[float, int, int]] = field(default_factory=list)  # t, queue, overflows


async def hold_unauth(i: int, port: int, ck: MachinePublic, t: Tally, stop: asyncio.Event) -> None:
    source = f"127.0.0.{2 + i % 16}"
    while not stop.is_set():
        try:
            c = await raw_dial(port, ck, source)
        except (OSError, ConnectionError, asyncio.IncompleteReadError):
            t.refused += 1
            await asyncio.sleep(0.5 + random.random())
            continue
        t.held += 1
        t.held_max = max(t.held_max, t.held)
        try:
            if i % 2:  # a request body that never ends
                h = c._h2
                sid = h.get_next_available_stream_id()
                hdrs = [(":method", "POST"), (":scheme", "http"), (":authority", "x"),
                        (":path", "/machine/register")]  # fmt: skip
                h.send_headers(sid, hdrs)
                for _ in range(3):  # 48 KiB in frames of the protocol's minimum size
                    h.send_data(sid, b" " * 16384)
                c._flush()
            waiter = asyncio.ensure_future(c.closed.wait())
            await asyncio.wait([waiter, asyncio.ensure_future(stop.wait())],
                               return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
            if waiter.done():
                t.closed_by_server += 1
            waiter.cancel()
        finally:
            t.held -= 1
            await c.close()


async def junk_registrations(n: int, port: int, ck: MachinePublic, t: Tally) -> None:
    sem = asyncio.Semaphore(32)

    async def one(k: int) -> None:
        async with sem:
            try:
                c = await raw_dial(port, ck, f"127.0.1.{1 + k % 64}")
            except (OSError, ConnectionError, asyncio.IncompleteReadError):
                t.junk["refused_conn"] = t.junk.get("refused_conn", 0) + 1
                return
            try:
                body = json.dumps({"Version": CURRENT_CAPABILITY_VERSION,
                                   "NodeKey": NodePrivate(os.urandom(32)).public().text(),
                                   "Hostinfo": {"Hostname": f"junk{k}"}}).encode()  # fmt: skip
                async with asyncio.timeout(10):
                    status, _ = await c.request("POST", "/machine/register", body)
                t.junk[str(status)] = t.junk.get(str(status), 0) + 1
            except Exception:  # counted, whatever it is
                t.junk["error"] = t.junk.get("error", 0) + 1
            finally:
                await c.close()

    await asyncio.gather(*(one(k) for k in range(n)))


async def attack(port: int, ck: MachinePublic, args: argparse.Namespace) -> dict[str, Any]:
    """The attacker's process: holders and junk registrations; returns its tally."""
    t = Tally()
    stop = asyncio.Event()
    holders = [asyncio.ensure_future(hold_unauth(i, port, ck, t, stop)) for i in range(args.unauth)]
    a0 = time.perf_counter()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(TIME_CAP):
            await junk_registrations(args.junk, port, ck, t)
            rest = args.duration - (time.perf_counter() - a0)
            if rest > 0:
                await asyncio.sleep(rest)
    attack_s = time.perf_counter() - a0
    stop.set()
    await asyncio.gather(*holders, return_exceptions=True)
    return {
        "attack_s": round(attack_s, 1), "unauth_held_max": t.held_max,
        "unauth_refused": t.refused, "unauth_closed_by_server": t.closed_by_server,
        "junk_results": dict(sorted(t.junk.items())),
    }  # fmt: skip


# ---- the registered nodes -----------------------------------------------------------------


async def join_nodes(
    n: int, port: int, ck: MachinePublic, authkey: str
) -> list[tuple[ControlClient, MapStream, int]]:
    sem = asyncio.Semaphore(16)
    out: list[tuple[ControlClient, MapStream, int]] = []

    async def one(i: int) -> None:
        async with sem:
            c = ControlClient("127.0.0.1", port, control_key=ck, hostname=f"n{i}")
            await c.connect()
            if (await c.register(authkey)).Error:
                raise RuntimeError("register failed")
            s = await c.map_stream(endpoints=[f"192.0.2.{i % 250 + 1}:{10000 + i}"])
            first = await s.next(wait=60)
            out.append((c, s, int(first["Node"]["ID"])))

    await asyncio.gather(*(one(i) for i in range(n)))
    return out


async def drain(streams: list[MapStream], seconds: float) -> None:
    async def one(s: MapStream) -> None:
        with contextlib.suppress(TimeoutError):
            while True:
                await s.next(wait=seconds)

    await asyncio.gather(*(one(s) for s in streams))


async def endpoint_change(nodes: list[tuple[ControlClient, MapStream, int]], k: int) -> float:
    """Seconds until every other node saw node k's new endpoint (10 s cap)."""
    c, _, nid = nodes[k % len(nodes)]
    ep = f"198.51.100.{k % 250 + 1}:{20000 + k}"
    t0 = time.perf_counter()

    async def seen(s: MapStream) -> float:
        while True:
            msg = await s.next(wait=10)
            for p in msg.get("PeersChangedPatch", []):
                if p.get("NodeID") == nid and p.get("Endpoints") == [ep]:
                    return time.perf_counter() - t0

    others = [s for (_, s, i) in nodes if i != nid]
    waiters = [asyncio.ensure_future(seen(s)) for s in others]
    await asyncio.sleep(0)
    await c.lite_update([ep])
    got = await asyncio.gather(*waiters, return_exceptions=True)
    return max(g if isinstance(g, float) else 10.0 for g in got)


def listen_queue(port: int) -> tuple[int, int]:
    """(connections in the listener's accept queue, TcpExt ListenOverflows so far)."""
    q = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        f = line.split()
        if f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port:
            q = int(f[4].split(":")[1], 16)
    lines = Path("/proc/net/netstat").read_text().splitlines()
    names, vals = lines[0].split(), lines[1].split()
    return q, int(vals[names.index("ListenOverflows")])


async def health_probe(port: int, probe: dict[str, Any]) -> int:
    """One plain ``GET /health`` on a fresh connection (as http_get does); the status.
    Records in ``probe`` when the connection was established and the answer came
    (monotonic, the clock the server's log uses too) and the local port."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        probe["connected"] = time.monotonic()
        probe["lport"] = writer.get_extra_info("sockname")[1]
        writer.write(f"GET /health HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                     "Connection: close\r\n\r\n".encode())  # fmt: skip
        head = await reader.readuntil(b"\r\n\r\n")
        probe["answered"] = time.monotonic()
        return int(head.split(b" ", 2)[1])
    finally:
        writer.close()


# ---- the run ----------------------------------------------------------------------------------


async def measure(
    port: int, pid: int, hello: dict[str, str], args: argparse.Namespace
) -> dict[str, Any]:
    ck = MachinePublic.from_text(hello["key"])
    t = Tally()
    t0 = time.perf_counter()
    nodes = await join_nodes(args.nodes, port, ck, hello["authkey"])
    ramp = time.perf_counter() - t0
    await drain([s for _, s, _ in nodes], 1.0)
    rss_base = rss_kib(pid)
    stop = asyncio.Event()

    async def monitor() -> None:
        while not stop.is_set():
            t.rss_max_kib = max(t.rss_max_kib, rss_kib(pid))
            with contextlib.suppress(Exception):
                t.backlog.append((time.monotonic(), *listen_queue(port)))
            with contextlib.suppress(Exception):
                _, raw = await http_get("127.0.0.1", port, "/bench-stats")
                for k, v in json.loads(raw).items():
                    t.gate_max[k] = max(t.gate_max.get(k, 0), int(v))
            await asyncio.sleep(0.5)

    async def health() -> None:
        while not stop.is_set():
            h0 = time.monotonic()
            probe: dict[str, Any] = {"t": h0}
            try:
                async with asyncio.timeout(1.0):
                    status = await health_probe(port, probe)
                ok = status == 200
            except Exception as exc:  # counted, whatever it is
                probe["error"] = type(exc).__name__
                ok = False
            probe["total"] = time.monotonic() - h0
            t.health_max_ms = max(t.health_max_ms, probe["total"] * 1000)
            t.probes.append(probe)
            if ok:
                t.health_ok += 1
            else:
                t.health_fail += 1
            await asyncio.sleep(0.2)

    async def own_lag() -> None:  # this process's loop: is the prober itself late?
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            l0 = loop.time()
            await asyncio.sleep(0.05)
            late = loop.time() - l0 - 0.05
            if late > 0.1:
                t.own_lag.append((time.monotonic() - late, late))

    async def changes() -> None:
        k = 0
        while not stop.is_set():
            t.change_ms.append(await endpoint_change(nodes, k) * 1000)
            k += 1
            await asyncio.sleep(1.0)

    bg = [asyncio.ensure_future(x) for x in (monitor(), health(), changes(), own_lag())]
    # The attacker runs in its own process, so its CPU does not delay this one's timing.
    cmd = [sys.executable, __file__, "--attack", str(port), "--key", hello["key"],
           "--unauth", str(args.unauth), "--junk", str(args.junk),
           "--duration", str(args.duration)]  # fmt: skip
    cpu0, wall0 = cpu_seconds(pid), time.perf_counter()
    attack0 = time.monotonic()
    proc = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE)
    try:
        async with asyncio.timeout(TIME_CAP + 60):
            raw, _ = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    attacked = json.loads(raw.decode().strip().splitlines()[-1])
    attacked["server_cpu_pct"] = round(
        100 * (cpu_seconds(pid) - cpu0) / (time.perf_counter() - wall0), 1
    )
    attacked["loadavg_1m"] = os.getloadavg()[0]
    attack1 = time.monotonic()
    stop.set()
    await asyncio.gather(*bg, return_exceptions=True)
    with contextlib.suppress(Exception):
        _, raw_log = await http_get("127.0.0.1", port, "/bench-health-log")
        seen = json.loads(raw_log)
        for pr in t.probes:
            later = [a_h for a_h in seen.get(str(pr.get("lport")), []) if a_h[0] >= pr["t"]]
            if later:
                pr["accepted"], pr["handled"] = min(later)
    slow = [pr for pr in t.probes if pr["total"] > 0.5 or "error" in pr]

    def rel(pr: dict[str, Any]) -> dict[str, Any]:
        out = {"at_s": round(pr["t"] - attack0, 2)}
        for k in ("connected", "accepted", "handled", "answered"):
            if pr.get(k):
                out[k + "_ms"] = round((pr[k] - pr["t"]) * 1000)
        out["total_ms"] = round(pr["total"] * 1000)
        if "error" in pr:
            out["error"] = pr["error"]
        return out

    attacked["attack_window_s"] = [0.0, round(attack1 - attack0, 1)]
    if t.backlog:
        attacked["accept_queue_max"] = max(q for _, q, _ in t.backlog)
        attacked["listen_overflows"] = t.backlog[-1][2] - t.backlog[0][2]
        attacked["accept_queue_series"] = [
            [round(a - attack0, 1), q, o - t.backlog[0][2]]
            for a, q, o in t.backlog
            if q > 16 or o != t.backlog[0][2]
        ][:60]
    attacked["health_slow"] = [rel(pr) for pr in slow][:40]
    attacked["bench_loop_late"] = [[round(a - attack0, 2), round(d * 1000)]
                                   for a, d in t.own_lag][:40]  # fmt: skip
    for c, _, _ in nodes:
        await c.close()
    return {
        "nodes": args.nodes, "unauth": args.unauth, "junk": args.junk,
        "ramp_s": round(ramp, 1), **attacked,
        "rss_base_mib": round(rss_base / 1024, 1), "rss_max_mib": round(t.rss_max_kib / 1024, 1),
        "rss_budget_mib": args.rss_budget_mib,
        "change_max_ms": round(max(t.change_ms, default=0.0), 1),
        "change_p50_ms": round(sorted(t.change_ms)[len(t.change_ms) // 2] if t.change_ms else 0, 1),
        "changes_timed": len(t.change_ms),
        "health_ok": t.health_ok, "health_fail": t.health_fail,
        "health_max_ms": round(t.health_max_ms, 1),
        "server_counters_max": t.gate_max,
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--db", help=argparse.SUPPRESS)
    ap.add_argument("--attack", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--key", help=argparse.SUPPRESS)
    ap.add_argument("--nodes", type=int, default=200)
    ap.add_argument("--unauth", type=int, default=1000)
    ap.add_argument("--junk", type=int, default=10000)
    ap.add_argument("--duration", type=float, default=30.0, help="minimum attack seconds")
    ap.add_argument("--rss-budget-mib", type=float, default=400.0)
    ap.add_argument(
        "--watchdog",
        default="",
        help="write the server's stalled-loop stacks (JSON) to this file at the end",
    )
    ap.add_argument(
        "--unauth-rate",
        type=float,
        default=0.0,
        help="the server's NoiseLimits.unauth_rate (0: the default)",
    )
    args = ap.parse_args()
    if args.serve:
        asyncio.run(serve(args.serve, args.db, args.unauth_rate, args.watchdog))
        return
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if args.attack:
        out = asyncio.run(attack(args.attack, MachinePublic.from_text(args.key), args))
        print(json.dumps(out), flush=True)
        return
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="bench-hardening-") as tmp:
        cmd = [sys.executable, __file__, "--serve", str(port), "--db", str(Path(tmp) / "s.db"),
               "--unauth-rate", str(args.unauth_rate), "--watchdog", args.watchdog]  # fmt: skip
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout is not None
            hello = json.loads(proc.stdout.readline())
            out = asyncio.run(measure(port, proc.pid, hello, args))
        finally:
            if args.watchdog and proc.poll() is None:
                proc.send_signal(signal.SIGUSR1)
                time.sleep(1.0)
            proc.terminate()
            proc.wait(10)
    out["pass"] = (
        out["rss_max_mib"] <= args.rss_budget_mib
        and out["change_max_ms"] <= 1000
        and out["health_fail"] == 0
    )
    print(json.dumps(out), flush=True)
    sys.exit(0 if out["pass"] else 1)


if __name__ == "__main__":
    main()
