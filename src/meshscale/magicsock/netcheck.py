"""netcheck: STUN every DERP region, learn our public address, choose a home region.

Theory of operation (docs/protocol/derp-disco-stun.md §3.4-3.6, tailscale net/netcheck)::

    start_report --plan--> probes (region x family sets, each with a delay)
       timer: send each probe when due, unless it would add no information
       STUN response (matched by TxID): latency = now - sent, set ends
       the 3rd region to answer arms an "enough" timer = slowest latency (x2 full)
    STUN phase ends at: all sets done | enough timer | 3 s | 5 s report deadline
       -> Report (mapped v4/v6, MappingVariesByDestIP, per-region latency)
       -> preferred (home) DERP from 5 min of history, with hysteresis

Performs no I/O. Driven by: ``start_report``, STUN responses passed to
``receive_stun``, and the timer. STUN requests come out of ``datagrams_to_send``
and must leave through the WireGuard socket, so that the mapped address learnt is
the NAT mapping of that socket (docs/protocol/derp-disco-stun.md §3.3).

HTTPS/ICMP latency fallbacks, captive-portal and port-mapping probes need I/O of
their own and are left to the driver.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field, replace
from typing import Protocol

from meshscale import stun, tailcfg
from meshscale.disco import AddrPort
from meshscale.magicsock.derpmap import FrozenDERPMap, FrozenDERPRegion

REPORT_TIMEOUT = 5.0  # seconds, whole report
STUN_PROBE_TIMEOUT = 3.0  # seconds, STUN phase
INITIAL_RETRANSMIT = 0.100  # seconds between tries in a full report
ACTIVE_RETRANSMIT = 0.200  # seconds, default base in incremental reports
ENOUGH_REGIONS = 3
NUM_INCREMENTAL_REGIONS = 3
FULL_REPORT_INTERVAL = 300.0  # seconds
REPORT_HISTORY_AGE = 305.0  # seconds (newer upstream: 5 min + 5 s)
PREFERRED_DERP_FRAME_TIME = 8.0  # seconds: "recently heard from the old home"
PREFERRED_DERP_KEEPALIVE_TIMEOUT = 120.0  # seconds: keep home without latency data
PREFERRED_DERP_ABSOLUTE_DIFF = 0.010  # seconds: smaller gains never move the home


class STUNCodec(Protocol):
    """What netcheck needs from a STUN implementation (meshscale.stun or a test double)."""

    def request(self, tx_id: bytes) -> bytes:
        """A Tailscale-format binding request with this 12-byte transaction ID."""
        ...

    def parse_response(self, data: bytes) -> tuple[bytes, AddrPort]:
        """(transaction ID, mapped address) of a binding success; ValueError otherwise."""
        ...


class TailscaleSTUN:
    """STUNCodec over meshscale.stun: the exact 40-byte request Tailscale servers answer."""

    def request(self, tx_id: bytes) -> bytes:
        return stun.request(tx_id)

    def parse_response(self, data: bytes) -> tuple[bytes, AddrPort]:
        r = stun.parse_response(data)
        return r.txid, AddrPort(r.addr, r.port)


@dataclass(frozen=True, slots=True)
class Report:
    """One netcheck result (tailscale netcheck.Report, the parts we fill)."""

    started: float
    udp: bool
    ipv4: bool
    ipv6: bool
    global_v4: AddrPort | None
    global_v6: AddrPort | None
    mapping_varies_by_dest_ip: bool | None
    region_latency: Mapping[int, float]
    region_v4_latency: Mapping[int, float]
    region_v6_latency: Mapping[int, float]
    preferred_derp: int
    stun_endpoints: tuple[AddrPort, ...]
    full: bool


@dataclass(slots=True)
class _Probe:
    at: float  # when to send (absolute)
    region: int
    node: str
    family: int
    dst: AddrPort


@dataclass(slots=True)
class _Run:
    start: float
    full: bool
    derp_map: FrozenDERPMap
    pending: list[_Probe]
    inflight: dict[bytes, tuple[_Probe, float]] = field(default_factory=dict)
    sets_left: set[tuple[int, int]] = field(default_factory=set)
    latency: dict[int, float] = field(default_factory=dict)
    v4: dict[int, float] = field(default_factory=dict)
    v6: dict[int, float] = field(default_factory=dict)
    first_v4: AddrPort | None = None
    global_v6: AddrPort | None = None
    mapping_varies: bool | None = None
    seen: Counter[AddrPort] = field(default_factory=Counter)
    enough_at: float | None = None
    https_wait: set[int] | None = None  # regions owing an HTTPS latency (fallback phase)


class Netcheck:
    """The netcheck report core (tailscale netcheck.Client). Performs no I/O.

    Driven by: ``start_report``, ``receive_stun`` and the timer.

    :param rand: ``rand(n)`` returns n random bytes (transaction IDs).
    :param codec: builds STUN requests and parses responses (default: meshscale.stun).
    :param https_fallback: when no STUN answer came, ask the driver (``https_probes_to_send``)
        to time ``GET /derp/latency-check`` per region and wait for ``receive_https_latency``
        until the 5 s report deadline (docs/protocol/derp-disco-stun.md §3.5), so a UDP-blocked node
        still picks a near home.
    """

    def __init__(
        self,
        rand: Callable[[int], bytes],
        codec: STUNCodec | None = None,
        *,
        https_fallback: bool = False,
    ) -> None:
        self._codec: STUNCodec = codec or TailscaleSTUN()
        self.https_fallback = https_fallback
        self._https_out: list[int] = []
        self._rand = rand
        self._run: _Run | None = None
        self._out: list[tuple[bytes, AddrPort]] = []
        self._reports: list[Report] = []
        self._history: list[Report] = []
        self._last: Report | None = None
        self._last_full: float | None = None
        self._last_derp_frame: dict[int, float] = {}

    # ---- inputs ----

    @property
    def running(self) -> bool:
        return self._run is not None

    @property
    def last_report(self) -> Report | None:
        return self._last

    def start_report(
        self,
        derp_map: FrozenDERPMap,
        now: float,
        *,
        have_v4: bool = True,
        have_v6: bool = False,
        force_full: bool = False,
    ) -> None:
        """Begin a report; a running one is abandoned. Full or incremental per
        docs/protocol/derp-disco-stun.md §3.4."""
        full = (
            force_full
            or self._last is None
            or not self._last.region_latency
            or self._last_full is None
            or now - self._last_full >= FULL_REPORT_INTERVAL
        )
        home = self._last.preferred_derp if self._last else 0
        if full:
            probes = _plan_initial(derp_map, now, have_v4, have_v6)
            self._last_full = now
        else:
            assert self._last is not None
            probes = _plan_incremental(derp_map, now, self._last, home, have_v4, have_v6)
        probes.sort(key=lambda p: p.at)
        run = _Run(now, full, derp_map, probes)
        run.sets_left = {(p.region, p.family) for p in probes}
        self._run = run
        if not probes:
            self._finish(now)

    def note_derp_frame(self, region: int, now: float) -> None:
        """A DERP frame arrived from ``region`` (keeps an unreachable-by-STUN home sticky)."""
        self._last_derp_frame[region] = now

    def receive_stun(self, data: bytes, now: float) -> bool:
        """Feed a datagram that looks like STUN. Returns True if it answered one of our probes."""
        run = self._run
        if run is None:
            return False
        try:
            tx_id, mapped = self._codec.parse_response(data)
        except ValueError:
            return False
        entry = run.inflight.pop(tx_id, None)
        if entry is None:
            return False  # unknown or late: ignored (docs/protocol/derp-disco-stun.md §3.3)
        probe, sent = entry
        latency = max(now - sent, 0.0)
        self._record(run, probe, mapped, latency, now)
        self._maybe_finish(now)
        return True

    def handle_timer(self, now: float) -> None:
        run = self._run
        if run is None:
            return
        while run.pending and run.pending[0].at <= now:
            probe = run.pending.pop(0)
            key = (probe.region, probe.family)
            if key not in run.sets_left:
                continue
            if not self._adds_info(run, probe):
                run.sets_left.discard(key)
                continue
            tx_id = self._rand(12)
            run.inflight[tx_id] = (probe, now)
            self._out.append((self._codec.request(tx_id), probe.dst))
        self._maybe_finish(now)

    # ---- outputs ----

    def get_timer(self) -> float | None:
        run = self._run
        if run is None:
            return None
        if run.https_wait is not None:
            return run.start + REPORT_TIMEOUT
        t = min(run.start + STUN_PROBE_TIMEOUT, run.start + REPORT_TIMEOUT)
        if run.pending:
            t = min(t, run.pending[0].at)
        if run.enough_at is not None:
            t = min(t, run.enough_at)
        return t

    def https_probes_to_send(self) -> list[int]:
        """Regions whose HTTPS latency the driver should measure now (fallback phase)."""
        out, self._https_out = self._https_out, []
        return out

    def receive_https_latency(self, region: int, latency: float | None, now: float) -> None:
        """The driver's HTTPS measurement for ``region`` (None: it failed)."""
        run = self._run
        if run is None or run.https_wait is None or region not in run.https_wait:
            return
        run.https_wait.discard(region)
        if latency is not None:
            run.latency[region] = min(latency, run.latency.get(region, latency))
        self._maybe_finish(now)

    def datagrams_to_send(self) -> list[tuple[bytes, AddrPort]]:
        out, self._out = self._out, []
        return out

    def next_report(self) -> Report | None:
        return self._reports.pop(0) if self._reports else None

    # ---- internals ----

    @staticmethod
    def _adds_info(run: _Run, probe: _Probe) -> bool:
        if probe.region not in run.latency:
            return True
        if probe.family == 6:
            return run.global_v6 is None
        return run.mapping_varies is None

    def _record(self, run: _Run, probe: _Probe, mapped: AddrPort, lat: float, now: float) -> None:
        fam = run.v4 if probe.family == 4 else run.v6
        for table in (run.latency, fam):
            table[probe.region] = min(lat, table.get(probe.region, lat))
        run.sets_left.discard((probe.region, probe.family))
        run.seen[mapped] += 1
        if mapped.ip.version == 4:
            if run.first_v4 is None:
                run.first_v4 = mapped
            elif mapped != run.first_v4:
                run.mapping_varies = True
            elif run.mapping_varies is None:
                run.mapping_varies = False
        else:
            run.global_v6 = mapped
        if len(run.latency) == ENOUGH_REGIONS and run.enough_at is None:
            wait = max(run.latency.values()) * (2 if run.full else 1)
            run.enough_at = now + wait

    def _maybe_finish(self, now: float) -> None:
        run = self._run
        assert run is not None  # only called while a report runs
        if run.https_wait is not None:
            if not run.https_wait or now >= run.start + REPORT_TIMEOUT:
                self._finish(now)
            return
        all_done = not run.sets_left or (not run.pending and not run.inflight)
        if not (
            all_done
            or (run.enough_at is not None and now >= run.enough_at)
            or now >= run.start + STUN_PROBE_TIMEOUT
        ):
            return
        regions = [
            r.region_id
            for r in run.derp_map.regions.values()
            if not (r.avoid or r.no_measure_no_home) and any(not n.stun_only for n in r.nodes)
        ]
        if self.https_fallback and not run.seen and regions:
            # No UDP at all: measure the regions over HTTPS instead
            # (docs/protocol/derp-disco-stun.md §3.5).
            run.pending.clear()
            run.https_wait = set(regions)
            self._https_out += sorted(regions)
            return
        self._finish(now)

    def _finish(self, now: float) -> None:
        run = self._run
        assert run is not None
        self._run = None
        eps: list[AddrPort] = [a for a in (run.first_v4, run.global_v6) if a is not None]
        eps += [a for a, n in run.seen.items() if n > 1 and a not in eps]
        report = Report(
            started=run.start,
            udp=bool(run.seen),
            ipv4=bool(run.v4),
            ipv6=bool(run.v6),
            global_v4=run.first_v4,
            global_v6=run.global_v6,
            mapping_varies_by_dest_ip=run.mapping_varies,
            region_latency=dict(run.latency),
            region_v4_latency=dict(run.v4),
            region_v6_latency=dict(run.v6),
            preferred_derp=0,
            stun_endpoints=tuple(eps),
            full=run.full,
        )
        prev = self._last.preferred_derp if self._last else 0
        self._history = [r for r in self._history if now - r.started <= REPORT_HISTORY_AGE]
        self._history.append(report)
        preferred = choose_preferred_derp(
            self._history,
            report,
            prev,
            run.derp_map.region_score,
            self._last_derp_frame.get(prev),
            now,
            homes={r.region_id for r in run.derp_map.regions.values() if _has_derp(r)},
        )
        report = _with_preferred(report, preferred)
        self._history[-1] = report
        self._last = report
        self._reports.append(report)


def net_info(
    report: Report | None, home_derp: int, *, os_has_ipv6: bool = False
) -> tailcfg.NetInfo:
    """The NetInfo to send in Hostinfo (docs/protocol/derp-disco-stun.md §3.7); ``home_derp`` is the
    Conn's actual home."""
    ni = tailcfg.NetInfo(PreferredDERP=home_derp, OSHasIPv6=os_has_ipv6)
    if report is None:
        return ni
    ni.WorkingUDP = report.udp
    ni.WorkingIPv6 = report.ipv6
    ni.MappingVariesByDestIP = report.mapping_varies_by_dest_ip
    latency = {f"{r}-v4": v for r, v in report.region_v4_latency.items()}
    latency |= {f"{r}-v6": v for r, v in report.region_v6_latency.items()}
    ni.DERPLatency = latency
    return ni


def _with_preferred(r: Report, preferred: int) -> Report:
    return replace(r, preferred_derp=preferred)


def choose_preferred_derp(
    history: list[Report],
    report: Report,
    prev: int,
    region_score: Mapping[int, float],
    prev_last_heard: float | None,
    now: float,
    *,
    homes: Collection[int] | None = None,
) -> int:
    """Home region selection with hysteresis (docs/protocol/derp-disco-stun.md §3.6).

    :param history: recent reports (within the history age), ``report`` included.
    :param prev: the previous home region, 0 for none.
    :param prev_last_heard: when a DERP frame last arrived from ``prev``.
    :param homes: regions that can be a home (have a DERP server; None: all). A region of
        STUN-only nodes is measured, and counts for MappingVariesByDestIP, but relays nothing.
    """

    def scored(region: int, latency: float) -> float:
        s = region_score.get(region, 0.0)
        return latency * s if s > 0 else latency

    best_recent: dict[int, float] = {}
    for r in history:
        for region, lat in r.region_latency.items():
            best_recent[region] = min(lat, best_recent.get(region, lat))
    preferred, best_any, old_cur = 0, 0.0, 0.0
    for region, lat in sorted(report.region_latency.items()):
        if homes is not None and region not in homes:
            continue
        if region == prev:
            old_cur = scored(region, lat)
        best = scored(region, best_recent[region])
        if preferred == 0 or best < best_any:
            preferred, best_any = region, best
    changing = prev != 0 and preferred != prev
    heard = prev_last_heard is not None and (
        prev_last_heard >= report.started or now - prev_last_heard <= PREFERRED_DERP_FRAME_TIME
    )
    # Keep an accessible old home unless the gain is >= 10 ms and >= 1/3
    # (docs/protocol/derp-disco-stun.md §3.6).
    if (
        changing
        and (old_cur != 0 or heard)
        and (old_cur - best_any < PREFERRED_DERP_ABSOLUTE_DIFF or best_any > old_cur / 3 * 2)
    ):
        preferred = prev
    if (
        preferred == 0
        and prev_last_heard is not None
        and now - prev_last_heard <= PREFERRED_DERP_KEEPALIVE_TIMEOUT
    ):
        preferred = prev
    return preferred


def _has_derp(region: FrozenDERPRegion) -> bool:
    return any(not n.stun_only for n in region.nodes)


def _measurable(dm: FrozenDERPMap) -> list[FrozenDERPRegion]:
    return [r for _, r in sorted(dm.regions.items()) if r.nodes and not r.no_measure_no_home]


def _probe(region: FrozenDERPRegion, t: int, family: int, at: float) -> _Probe | None:
    node = region.nodes[t % len(region.nodes)]
    ip = node.stun_ip(family)
    if ip is None:
        return None
    dst = AddrPort(ip, node.stun_port_or_default())
    return _Probe(at, region.region_id, node.name, family, dst)


def _plan_initial(dm: FrozenDERPMap, now: float, v4: bool, v6: bool) -> list[_Probe]:
    out: list[_Probe] = []
    for region in _measurable(dm):
        for t in range(3):
            for fam, want in ((4, v4), (6, v6)):
                p = _probe(region, t, fam, now + t * INITIAL_RETRANSMIT) if want else None
                if p is not None:
                    out.append(p)
    return out


def _plan_incremental(
    dm: FrozenDERPMap, now: float, last: Report, home: int, have4: bool, have6: bool
) -> list[_Probe]:
    regions = [r for r in _measurable(dm) if not r.avoid or r.region_id == home]
    regions.sort(
        key=lambda r: (
            r.region_id not in last.region_latency,
            last.region_latency.get(r.region_id, 0.0),
        )
    )
    had4, had6 = bool(last.region_v4_latency), bool(last.region_v6_latency)
    had_both = have6 and had4 and had6
    out: list[_Probe] = []
    contains_home = home == 0
    for i, region in enumerate(regions):
        is_home = region.region_id == home
        if i >= NUM_INCREMENTAL_REGIONS:
            if contains_home:
                break
            if not is_home:
                continue
        do4, do6 = have4, have6
        fastest_two = i < 2
        tries = 1
        if fastest_two or is_home:
            tries = 2
        elif had_both:
            do4, do6 = (True, False) if i % 2 == 0 else (False, True)
        if not is_home and not fastest_two and not had6:
            do6 = False
        if is_home:
            tries, contains_home = 4, True
        base = last.region_latency.get(region.region_id, 0.0) * 1.2 or ACTIVE_RETRANSMIT
        for t in range(tries):
            if t and not had6:
                do6 = False
            delay = t * base + (t * 0.050 if t > 1 else 0.0)
            for fam, want in ((4, do4), (6, do6)):
                p = _probe(region, t, fam, now + delay) if want else None
                if p is not None:
                    out.append(p)
    return out
