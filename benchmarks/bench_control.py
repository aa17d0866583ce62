"""Control-server benchmark: N simulated clients holding map streams over the real protocol.

Per N: the server (build_app on a State in an SQLite file, plain HTTP on loopback) runs as a
separate process; this process opens N clients (HTTP upgrade, Noise, HTTP/2), registers each with a
reusable pre-auth key and holds its map stream. Then, K times, one client posts a lite endpoint
update and we time how long until every other client has received the resulting
PeersChangedPatch (p50/p99/max over all receivers), plus the same for a node joining
(PeersChanged). Reports server RSS at idle with N streams, and the ramp-up time.

    .venv/bin/python benchmarks/bench_control.py                    # N = 100, 1000
    .venv/bin/python benchmarks/bench_control.py --sizes 100 1000 3000 --changes 5

All clients live in this one process, so latency includes their own decode time; the figures
are upper bounds for the server. The server's CPU time per change (from /proc, 10 ms ticks) is
the figure least disturbed by other load on the machine.
Not a test: run by hand and copy the figures.

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
import io
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

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
    def __init__(self, port: int, control_key: MachinePublic, authkey: str) -> None:
        self.port = port
        self.control_key = control_key
        self.authkey = authkey
        self.clients: list[ControlClient] = []
        self.streams: list[MapStream] = []
        self.node_ids: list[int] = []
        self.retries = 0  # upgrades refused with 503 and retried
        self.server_pid: int | None = None  # for the ramp's progress lines

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

    async def ramp(self, n: int, concurrency: int) -> float:
        t0 = time.perf_counter()
        sem = asyncio.Semaphore(concurrency)

        async def one(i: int) -> None:
            async with sem:
                await self.add_client(i)
            if len(self.clients) % 1000 == 0:  # progress: the ramp at 10,000 takes minutes
                took = time.perf_counter() - t0
                extra = ""
                if self.server_pid is not None:  # a capped ramp still says what it cost
                    pid = self.server_pid
                    extra = f", server CPU {cpu_seconds(pid):.0f} s, RSS {rss_kib(pid) >> 10} MiB"
                print(f"{len(self.clients)} joined, {took:.0f} s{extra}", file=sys.stderr)

        await asyncio.gather(*(one(len(self.clients) + i) for i in range(n)))
        return time.perf_counter() - t0

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
        self, needle: bytes, pred: object, skip: int | None, wait: float
    ) -> list[float]:
        """Per stream (but ``skip``), seconds until a message satisfying ``pred`` arrived.
        Messages are decompressed, and parsed only when they contain ``needle``."""
        t0 = time.perf_counter()
        out: list[float] = []

        async def one(s: MapStream) -> None:
            while True:
                body = decompress_bounded(_DCTX, await s.next_frame(wait=wait))
                if needle in body and pred(json.loads(body)):  # type: ignore[operator]
                    out.append(time.perf_counter() - t0)
                    return

        await asyncio.gather(*(one(s) for i, s in enumerate(self.streams) if i != skip))
        return out

    async def endpoint_change(self, k: int, wait: float) -> list[float]:
        idx = k % len(self.clients)
        nid = self.node_ids[idx]
        ep = f"198.51.100.{k % 250 + 1}:{20000 + k}"

        def seen(msg: dict[str, object]) -> bool:
            return any(
                p.get("NodeID") == nid and p.get("Endpoints") == [ep]
                for p in msg.get("PeersChangedPatch", [])  # type: ignore[union-attr]
            )

        waiter = asyncio.ensure_future(self.wait_all(ep.encode(), seen, idx, wait))
        await asyncio.sleep(0)
        status = await self.clients[idx].lite_update([ep])
        assert status == 200
        return await waiter

    async def join(self, k: int, wait: float) -> list[float]:
        name = f"joiner{k}"

        def seen(msg: dict[str, object]) -> bool:
            return any(
                str(p.get("Name", "")).startswith(name)
                for p in msg.get("PeersChanged", [])  # type: ignore[union-attr]
            )

        waiter = asyncio.ensure_future(self.wait_all(name.encode(), seen, None, wait))
        await asyncio.sleep(0)
        c = ControlClient("127.0.0.1", self.port, control_key=self.control_key, hostname=name)
        await c.connect()
        await c.register(self.authkey)
        try:
            return await waiter
        finally:
            await c.close()

    async def close(self) -> None:
        self.stop_sinks()
        await asyncio.gather(*(c.close() for c in self.clients))


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100 * len(xs)))] * 1000


async def measure(
    port: int, pid: int, hello: dict[str, str], n: int, changes: int, concurrency: int
) -> dict[str, object]:
    rss0 = rss_kib(pid)
    b = Bench(port, MachinePublic.from_text(hello["key"]), hello["authkey"])
    b.server_pid = pid
    c_ramp, own_ramp = cpu_seconds(pid), time.process_time()
    ramp = await b.ramp(n, concurrency)
    c_ramp, own_ramp = cpu_seconds(pid) - c_ramp, time.process_time() - own_ramp
    await asyncio.sleep(1.0)  # the sinks empty what the ramp left in flight
    b.stop_sinks()
    await b.drain(0.5)
    rss_idle = rss_kib(pid)
    ep_lat: list[float] = []
    join_lat: list[float] = []
    ep_cpu = join_cpu = 0.0
    for k in range(changes):
        c0 = cpu_seconds(pid)
        ep_lat += await b.endpoint_change(k, wait=120)
        c1 = cpu_seconds(pid)
        await b.drain(0.2)
        c2 = cpu_seconds(pid)
        join_lat += await b.join(k, wait=120)
        c3 = cpu_seconds(pid)
        await b.drain(0.2)
        ep_cpu += c1 - c0
        join_cpu += c3 - c2
    await b.close()
    return {
        "N": n,
        "ramp_s": round(ramp, 2),
        "ramp_server_cpu_s": round(c_ramp, 2),
        "ramp_clients_cpu_s": round(own_ramp, 2),
        "ramp_retries_503": b.retries,
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
    open_gate: bool = False, postgres: bool = False,
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
            out = asyncio.run(measure(port, proc.pid, hello, n, changes, concurrency))
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
    import resource

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    for n in args.sizes:
        for src in ([args.baseline_src] if args.baseline_src else []) + [None]:
            out = run_size(
                n, args.changes, args.batch_delay, args.concurrency, src, args.open_gate,
                args.postgres,
            )  # fmt: skip
            print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
