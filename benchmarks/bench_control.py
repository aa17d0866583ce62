"""Control-server benchmark: N simulated clients holding map streams over the real protocol.

Per N: the server (build_app on a State in an SQLite file, plain HTTP on loopback) runs as a
separate process; this process opens N clients (HTTP upgrade, Noise, HTTP/2), registers each with a
reusable pre-auth key and holds its map stream. Then, K times, one client posts a lite endpoint
update and we time how long until every other client has received the resulting
PeersChangedPatch (p50/p99/max over all receivers), plus the same for a node joining
(PeersChanged). Reports server RSS at idle with N streams, and the ramp-up time.

    .venv/bin/python benchmarks/bench_control.py                    # N = 100, 1000
    .venv/bin/python benchmarks/bench_control.py --sizes 100 1000 3000 --changes 5

The clients live in ``--procs`` worker processes (default 1), driven by this one over pipes
(JSON lines); arrival times are CLOCK_MONOTONIC (perf_counter), the same in every process.
Latency includes the clients' own decode time; the figures are upper bounds for the server.

    .venv/bin/python benchmarks/bench_control.py --sizes 10000 --open-gate --procs 2

The server's CPU time per change (from /proc, 10 ms ticks) is
the figure least disturbed by other load on the machine.
Not a test: run by hand and copy the figures.

Figures of 2026-12-04 (issue #14 goal 4, SQLite, --open-gate --procs 2, load 1.2-2.6): N=10,000
ramp 113 s with --concurrency 128 (103 s at 32 with FANOUT_SPACING 3), idle RSS ~540 MiB,
endpoint change -> all p99 421-700 ms. The README has the table.

Figures of 2026-12-02 (issue #14, the README has the table): N=3000 before / after the fan-out
tick, same run: ramp 267 / 126 s, endpoint change -> all p50/p99 484/1291 and 924/1058 ms,
server CPU per change 407 / 70 ms; with the 30 us/stream gap 503/594 ms.

Figures of 2026-11-25 (2 shared cores, load ~5 from other work; --changes 3, 2 at 5000):

    N      ramp   server RSS idle   per stream   change -> all: p50 / p99   server CPU/change
    100    0.7 s      59 MiB          66 KiB          20 /   23 ms              10 ms
    1000    21 s     106 MiB          55 KiB          52 /  106 ms              67 ms  (*)
    3000   266 s     227 MiB          60 KiB         405 / 1064 ms             217 ms
    5000   575 s     341 MiB          59 KiB         701 / 1009 ms             385 ms
   10000  1644 s     671 MiB          63 KiB        2200 / 2607 ms         910-2060 ms  (*)

The fan-out costs about 75 us of server CPU per open stream and change (h2 framing, Noise
record, socket write); the ramp is dominated by full maps (O(N) each, O(N^2) in all) and by
this process decoding them (8 GiB of client RSS at 10,000).
(*) after the drain fast path and the per-stream message gap; the 3000/5000 rows predate them
(p50 then 124 ms at 1000). At 10,000 only two changes of each kind were timed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import gc
import io
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import zstandard
from procstat import cpu_seconds, free_port, rss_kib

from meshscale.key import MachinePublic
from meshscale.node.controlclient.direct import decompress_bounded
from meshscale.testing.controlclient import ClientError, ControlClient, MapStream

# ---- server side (runs in a child process) ----------------------------------------------


async def serve(port: int, batch_delay: float, db: str, open_gate: bool) -> None:
    from meshscale.control.app import AppSettings, build_app
    from meshscale.control.state import State
    from meshscale.io.http import HTTPServer
    from meshscale.key import MachinePrivate
    from meshscale.tailcfg import DERPMap, DERPNode, DERPRegion

    if db.startswith("postgres:"):  # a DSN on a throw-away cluster (--postgres)
        from meshscale.control.db.postgres import PostgresStore

        state = State(PostgresStore(db.removeprefix("postgres:")))
    else:
        state = State.open(db)  # the persistent store (a file), as deployed
    user = state.create_user("bench")
    secret = state.create_preauth_key(user.id, reusable=True).secret
    derp = DERPMap(Regions={900: DERPRegion(900, "b", "Bench", Nodes=[DERPNode("900a", 900, "d")])})
    key = MachinePrivate(os.urandom(32))
    settings = AppSettings(
        server_url=f"http://127.0.0.1:{port}", base_domain="bench.ts", batch_delay=batch_delay
    )
    limits = None
    if open_gate:  # measure the server's join work, not its admission control (#12)
        from meshscale.controlhttp import NoiseLimits

        limits = NoiseLimits(unauth_rate=1e6, unauth_rate_per_source=1e6, shed_lag=1e9)
    app = build_app(state, settings, derp, control_key=key, limits=limits)
    server = HTTPServer(app.router, keepalive_timeout=3600)
    await server.start("127.0.0.1", port)
    await app.start()
    print(json.dumps({"key": key.public().text(), "authkey": secret}), flush=True)
    await asyncio.Event().wait()


# ---- client side --------------------------------------------------------------------------


def source_addr(i: int) -> str:
    """Client i's own loopback source address (127.1.0.1 on): the server paces new
    connections per source (controlhttp/limits.py), as it should, so one address for
    thousands of simulated nodes would measure that defence rather than the server."""
    return f"127.{1 + i // 64000}.{(i // 250) % 256}.{i % 250 + 1}"


_FIRST_ID = re.compile(rb'^\{"Node":\{"ID":(\d+)[,}]')
_DCTX = zstandard.ZstdDecompressor()
HEAD = 4096  # bytes of a full map decompressed to find the self node's ID


def node_id(frame: bytes) -> int:
    """The self node's ID from a full map as sent (zstd): only its first zstd frame is
    decompressed, and only its first HEAD bytes (our server writes Node first and ID first
    in it, and a large map's first frame is just that head), instead of decompressing and
    parsing O(N) peers in this process, which would make the benchmark measure its own
    clients. Falls back to the whole message when the start does not match."""
    with _DCTX.stream_reader(io.BytesIO(frame), read_across_frames=False) as r:
        head = r.read(HEAD)
    m = _FIRST_ID.match(head)
    if m is not None:
        return int(m.group(1))
    msg = json.loads(decompress_bounded(_DCTX, frame))
    return int(msg["Node"]["ID"])


def is_refusal(exc: ClientError) -> bool:
    """A 503 before the upgrade: the server's admission control (pacing, load shedding)
    asking the client to come back; real clients retry, so the bench does too."""
    return "HTTP 503" in str(exc)


class Bench:
    """One worker's share of the clients: ``first`` is the global index of its first one
    (source addresses and host names are by global index)."""

    def __init__(self, port: int, control_key: MachinePublic, authkey: str, first: int) -> None:
        self.port = port
        self.control_key = control_key
        self.authkey = authkey
        self.first = first
        self.clients: list[ControlClient] = []
        self.streams: list[MapStream] = []
        self.node_ids: list[int] = []
        self.retries = 0  # upgrades refused with 503 and retried
        self._waiter: asyncio.Future[list[float]] | None = None

    def stop_sinks(self) -> None:
        """Read messages again (measurements)."""
        for s in self.streams:
            s.drop_messages(False)

    def start_sinks(self) -> None:
        """Between measurements every stream's messages are discarded as they arrive, in
        the connection's reader (MapStream.drop_messages), so they neither pile up in this
        process's memory nor cost it a task wake-up each: at 10,000 streams every fan-out
        tick is 10,000 messages here, and the bench process was the ramp's bottleneck."""
        for s in self.streams:
            s.drop_messages(True)

    async def add_client(self, i: int) -> None:
        c = ControlClient(
            "127.0.0.1", self.port, control_key=self.control_key, hostname=f"n{i}",
            local_addr=source_addr(i),
        )  # fmt: skip
        for attempt in range(60):
            try:
                await c.connect()
                break
            except ClientError as exc:
                if not is_refusal(exc) or attempt == 59:
                    raise
                self.retries += 1
                await asyncio.sleep(0.1 + 0.05 * attempt)
        resp = await c.register(self.authkey)
        if resp.Error:
            raise RuntimeError(resp.Error)
        s = await c.map_stream(endpoints=[f"192.0.2.{i % 250 + 1}:{10000 + i}"])
        first = await s.next_frame(wait=120)
        self.clients.append(c)
        self.streams.append(s)
        self.node_ids.append(node_id(first))
        s.drop_messages(True)

    async def ramp(self, n: int, concurrency: int, progress: Callable[[int], None]) -> None:
        sem = asyncio.Semaphore(concurrency)

        async def one(i: int) -> None:
            async with sem:
                await self.add_client(i)
            if len(self.clients) % PROGRESS_STEP == 0:
                # The clients so far are long-lived: out of the collector's way (a full
                # collection over thousands of connections' objects stalled this process).
                gc.freeze()
                progress(len(self.clients))

        await asyncio.gather(*(one(self.first + i) for i in range(n)))
        progress(len(self.clients))

    async def drain(self, seconds: float) -> None:
        """Swallow deltas still in flight from the ramp-up."""

        async def one(s: MapStream) -> None:
            while True:
                try:
                    await s.next_frame(wait=seconds)  # not decompressed: only emptied
                except TimeoutError:
                    return

        await asyncio.gather(*(one(s) for s in self.streams))

    async def wait_all(
        self, needle: bytes, pred: Callable[[dict[str, Any]], bool], skip: int | None, wait: float
    ) -> list[float]:
        """Per stream (but ``skip``), the time (perf_counter: CLOCK_MONOTONIC, the same in
        every process) a message satisfying ``pred`` arrived. Messages are decompressed,
        and parsed only when they contain ``needle``."""
        out: list[float] = []

        async def one(s: MapStream) -> None:
            while True:
                body = decompress_bounded(_DCTX, await s.next_frame(wait=wait))
                if needle in body and pred(json.loads(body)):
                    out.append(time.perf_counter())
                    return

        await asyncio.gather(*(one(s) for i, s in enumerate(self.streams) if i != skip))
        return out

    def watch(self, cmd: dict[str, Any]) -> None:
        """Start waiting for the change ``cmd`` describes on every stream of this worker."""
        if cmd["kind"] == "endpoint":
            nid, ep = cmd["nid"], cmd["ep"]

            def seen(msg: dict[str, Any]) -> bool:
                return any(
                    p.get("NodeID") == nid and p.get("Endpoints") == [ep]
                    for p in msg.get("PeersChangedPatch", [])
                )

            needle = ep.encode()
        else:
            name = cmd["name"]

            def seen(msg: dict[str, Any]) -> bool:
                return any(
                    str(p.get("Name", "")).startswith(name) for p in msg.get("PeersChanged", [])
                )

            needle = name.encode()
        self._waiter = asyncio.ensure_future(self.wait_all(needle, seen, cmd.get("skip"), 120))

    async def post(self, idx: int, ep: str) -> float:
        """Client ``idx`` (of this worker) posts a lite endpoint update; returns when it
        was sent (perf_counter)."""
        t0 = time.perf_counter()
        status = await self.clients[idx].lite_update([ep])
        assert status == 200
        return t0

    async def close(self) -> None:
        self.stop_sinks()
        await asyncio.gather(*(c.close() for c in self.clients))


PROGRESS_STEP = 250  # joins between a worker's progress reports


async def worker(port: int, key: str, authkey: str, first: int, n: int, concurrency: int) -> None:
    """A bench worker process: ``n`` clients from global index ``first``, driven by JSON
    commands on stdin, answering one JSON line each on stdout."""
    import resource

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    b = Bench(port, MachinePublic.from_text(key), authkey, first)

    def send(obj: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    while line := await reader.readline():
        cmd = json.loads(line)
        op = cmd["op"]
        if op == "ramp":
            await b.ramp(n, concurrency, lambda k: send({"joined": k}))
            send({"cpu": time.process_time(), "retries": b.retries})
        elif op == "settle":
            await asyncio.sleep(1.0)  # the sinks empty what the ramp left in flight
            b.stop_sinks()
            await b.drain(0.5)
            send({})
        elif op == "nid":
            send({"nid": b.node_ids[cmd["idx"]]})
        elif op == "watch":
            b.watch(cmd)
            await asyncio.sleep(0)
            send({})
        elif op == "post":
            send({"t0": await b.post(cmd["idx"], cmd["ep"])})
        elif op == "result":
            assert b._waiter is not None
            send({"at": await b._waiter})
        elif op == "drain":
            await b.drain(cmd["seconds"])
            send({})
        elif op == "close":
            await b.close()
            send({"cpu": time.process_time()})
            return


class Workers:
    """The bench's worker processes, each holding a share of the N clients."""

    def __init__(self, cmd: list[str], shares: list[tuple[int, int]], concurrency: int) -> None:
        each = max(1, concurrency // len(shares))
        self.shares = shares
        self.procs = [
            subprocess.Popen(
                [*cmd, "--worker", str(first), str(n), str(each)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            for first, n in shares
        ]
        self.joined = [0] * len(shares)

    def send(self, w: int, cmd: dict[str, Any]) -> None:
        p = self.procs[w]
        assert p.stdin is not None
        p.stdin.write(json.dumps(cmd) + "\n")
        p.stdin.flush()

    async def recv(self, w: int) -> dict[str, Any]:
        p = self.procs[w]
        assert p.stdout is not None
        line = await asyncio.to_thread(p.stdout.readline)
        if not line:
            raise RuntimeError(f"bench worker {w} exited")
        out: dict[str, Any] = json.loads(line)
        return out

    async def ask(self, w: int, cmd: dict[str, Any]) -> dict[str, Any]:
        self.send(w, cmd)
        return await self.recv(w)

    async def all(self, cmd: dict[str, Any] | list[dict[str, Any]]) -> list[dict[str, Any]]:
        cmds = cmd if isinstance(cmd, list) else [cmd] * len(self.procs)
        for w, c in enumerate(cmds):
            self.send(w, c)
        return list(await asyncio.gather(*(self.recv(w) for w in range(len(self.procs)))))

    def owner(self, idx: int) -> tuple[int, int]:
        """(worker, its local index) of global client ``idx``."""
        for w, (first, n) in enumerate(self.shares):
            if first <= idx < first + n:
                return w, idx - first
        raise IndexError(idx)

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait(10)


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100 * len(xs)))] * 1000


async def measure(
    port: int, pid: int, hello: dict[str, str], n: int, changes: int, concurrency: int, procs: int
) -> dict[str, object]:
    rss0 = rss_kib(pid)
    k = max(1, min(procs, n))
    shares = [(w * n // k, (w + 1) * n // k - w * n // k) for w in range(k)]
    cmd = [sys.executable, __file__, "--port", str(port), "--key", hello["key"],
           "--authkey", hello["authkey"]]  # fmt: skip
    ws = Workers(cmd, shares, concurrency)
    try:
        return await _measure(ws, port, pid, hello, n, changes, rss0)
    finally:
        ws.stop()


async def _measure(
    ws: Workers, port: int, pid: int, hello: dict[str, str], n: int, changes: int, rss0: int
) -> dict[str, object]:
    t0 = time.perf_counter()
    c_ramp = cpu_seconds(pid)
    for w in range(len(ws.procs)):
        ws.send(w, {"op": "ramp"})

    async def follow(w: int) -> dict[str, Any]:
        while "joined" in (msg := await ws.recv(w)):
            before = sum(ws.joined) // 1000
            ws.joined[w] = msg["joined"]
            if sum(ws.joined) // 1000 > before:  # the ramp at 10,000 takes minutes
                print(
                    f"{sum(ws.joined)} joined, {time.perf_counter() - t0:.0f} s, server CPU "
                    f"{cpu_seconds(pid):.0f} s, RSS {rss_kib(pid) >> 10} MiB",
                    file=sys.stderr,
                )
        return msg

    done = await asyncio.gather(*(follow(w) for w in range(len(ws.procs))))
    ramp = time.perf_counter() - t0
    c_ramp = cpu_seconds(pid) - c_ramp
    await ws.all({"op": "settle"})
    rss_idle = rss_kib(pid)
    ep_lat: list[float] = []
    join_lat: list[float] = []
    ep_cpu = join_cpu = 0.0
    key = MachinePublic.from_text(hello["key"])
    for i in range(changes):
        idx = i % n
        ow, local = ws.owner(idx)
        nid = (await ws.ask(ow, {"op": "nid", "idx": local}))["nid"]
        ep = f"198.51.100.{i % 250 + 1}:{20000 + i}"
        watch = {"op": "watch", "kind": "endpoint", "nid": nid, "ep": ep}
        await ws.all([dict(watch, skip=local) if w == ow else watch for w in range(len(ws.procs))])
        c0 = cpu_seconds(pid)
        t_post = (await ws.ask(ow, {"op": "post", "idx": local, "ep": ep}))["t0"]
        ep_lat += [a - t_post for r in await ws.all({"op": "result"}) for a in r["at"]]
        c1 = cpu_seconds(pid)
        await ws.all({"op": "drain", "seconds": 0.2})
        name = f"joiner{i}"
        await ws.all({"op": "watch", "kind": "join", "name": name})
        c2 = cpu_seconds(pid)
        t_join = time.perf_counter()
        c = ControlClient("127.0.0.1", port, control_key=key, hostname=name)
        await c.connect()
        await c.register(hello["authkey"])
        try:
            join_lat += [a - t_join for r in await ws.all({"op": "result"}) for a in r["at"]]
        finally:
            await c.close()
        c3 = cpu_seconds(pid)
        await ws.all({"op": "drain", "seconds": 0.2})
        ep_cpu += c1 - c0
        join_cpu += c3 - c2
    closed = await ws.all({"op": "close"})
    return {
        "N": n,
        "procs": len(ws.procs),
        "ramp_s": round(ramp, 2),
        "ramp_server_cpu_s": round(c_ramp, 2),
        "ramp_clients_cpu_s": round(sum(d["cpu"] for d in done), 2),
        "ramp_retries_503": sum(d["retries"] for d in done),
        "rss_start_mib": round(rss0 / 1024, 1),
        "rss_idle_mib": round(rss_idle / 1024, 1),
        "rss_per_stream_kib": round((rss_idle - rss0) / n, 1),
        "endpoint_p50_ms": round(pct(ep_lat, 50), 1),
        "endpoint_p99_ms": round(pct(ep_lat, 99), 1),
        "endpoint_max_ms": round(max(ep_lat) * 1000, 1),
        "join_p50_ms": round(pct(join_lat, 50), 1),
        "join_p99_ms": round(pct(join_lat, 99), 1),
        "server_cpu_ms_per_endpoint_change": round(ep_cpu / changes * 1000, 1),
        "server_cpu_ms_per_join": round(join_cpu / changes * 1000, 1),
        "clients_cpu_s": round(sum(d["cpu"] for d in closed), 2),
        "samples": len(ep_lat) + len(join_lat),
        "median_all_ms": round(statistics.median(ep_lat + join_lat) * 1000, 1),
    }


@contextlib.contextmanager
def postgres_cluster() -> Iterator[str]:
    """A throw-away PostgreSQL server (initdb in a temporary directory, Unix socket only,
    fsync off as in tests/control/test_db_postgres.py); yields a DSN of a fresh database."""
    import shutil

    def find(name: str) -> str:
        found = shutil.which(name) or next(
            (str(d / name) for d in sorted(Path("/usr/lib/postgresql").glob("*/bin"))[::-1]
             if (d / name).exists()), None,
        )  # fmt: skip
        if found is None:
            raise SystemExit(f"--postgres: {name} is not installed")
        return found

    initdb, pg_ctl = find("initdb"), find("pg_ctl")
    root = Path(tempfile.mkdtemp(prefix="bench-control-pg-", dir="/tmp"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # postgres refuses to run as root
        shutil.chown(root, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    data = root / "data"
    run = functools.partial(subprocess.run, check=True, capture_output=True, timeout=120)
    run([*as_user, initdb, "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync"])
    opts = f"-c listen_addresses='' -c unix_socket_directories={root} -p {port} -c fsync=off"
    run([*as_user, pg_ctl, "-D", str(data), "-o", opts, "-l", str(root / "log"), "-w", "start"])
    try:
        yield f"host={root} port={port} user=postgres dbname=postgres"
    finally:
        subprocess.run([*as_user, pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"],
                       capture_output=True, timeout=60)  # fmt: skip
        shutil.rmtree(root, ignore_errors=True)


def run_size(
    n: int, changes: int, batch_delay: float, concurrency: int, src: str | None,
    open_gate: bool = False, postgres: bool = False, procs: int = 1,
) -> dict[str, object]:  # fmt: skip
    """One server process (from ``src``, another tree's src/, when given) and N clients."""
    port = free_port()
    env = dict(os.environ)
    if src:
        env["PYTHONPATH"] = src
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-control-"))
        db = str(Path(tmp) / "state.db")
        if postgres:
            db = "postgres:" + stack.enter_context(postgres_cluster())
        cmd = [sys.executable, __file__, "--serve", str(port), "--batch-delay", str(batch_delay)]
        if open_gate:
            cmd.append("--open-gate")
        proc = subprocess.Popen([*cmd, "--db", db], stdout=subprocess.PIPE, text=True, env=env)
        try:
            assert proc.stdout is not None
            hello = json.loads(proc.stdout.readline())
            out = asyncio.run(measure(port, proc.pid, hello, n, changes, concurrency, procs))
            out["server"] = src or "this tree"
            out["open_gate"] = open_gate
            out["store"] = "postgresql" if postgres else "sqlite"
            return out
        finally:
            proc.terminate()
            proc.wait(10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 1000])
    ap.add_argument("--changes", type=int, default=5)
    ap.add_argument("--batch-delay", type=float, default=0.005)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--db", help=argparse.SUPPRESS)
    ap.add_argument(
        "--procs",
        type=int,
        default=1,
        help="bench worker processes the N clients are spread over (each client is still a "
        "full protocol client; the concurrency is split between them)",
    )
    ap.add_argument("--worker", type=int, nargs=3, help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--key", help=argparse.SUPPRESS)
    ap.add_argument("--authkey", help=argparse.SUPPRESS)
    ap.add_argument(
        "--open-gate",
        action="store_true",
        help="server without the new-connection rate limits and load shedding (issue #12), "
        "so the ramp measures join work; by default the bench retries their 503s",
    )
    ap.add_argument(
        "--baseline-src",
        help="src/ directory of another tree (e.g. `git archive main src | tar -x -C DIR`): "
        "each size also runs against a server from it, first",
    )
    ap.add_argument(
        "--postgres",
        action="store_true",
        help="the server's store on a throw-away PostgreSQL cluster (initdb) instead of SQLite",
    )
    args = ap.parse_args()
    if args.serve:
        asyncio.run(serve(args.serve, args.batch_delay, args.db, args.open_gate))
        return
    if args.worker:
        first, count, conc = args.worker
        asyncio.run(worker(args.port, args.key, args.authkey, first, count, conc))
        return
    import resource

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    for n in args.sizes:
        for src in ([args.baseline_src] if args.baseline_src else []) + [None]:
            out = run_size(
                n, args.changes, args.batch_delay, args.concurrency, src, args.open_gate,
                args.postgres, args.procs,
            )  # fmt: skip
            print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
