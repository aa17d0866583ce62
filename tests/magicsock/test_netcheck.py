"""netcheck core: probe plans, mapping-varies detection, timeouts, home DERP hysteresis."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest

from meshscale import stun
from meshscale.disco import AddrPort
from meshscale.magicsock.derpmap import FrozenDERPMap, FrozenDERPNode, FrozenDERPRegion
from meshscale.magicsock.netcheck import (
    STUN_PROBE_TIMEOUT,
    Netcheck,
    Report,
    choose_preferred_derp,
)


def rand():
    c = itertools.count(1)
    return lambda n: next(c).to_bytes(n, "big")


def region(rid: int, *ips: str, **kw) -> FrozenDERPRegion:
    nodes = tuple(FrozenDERPNode(f"{rid}{chr(97 + i)}", rid, ipv4=ip) for i, ip in enumerate(ips))
    return FrozenDERPRegion(rid, f"r{rid}", f"Region {rid}", nodes, **kw)


DM = FrozenDERPMap(
    {
        900: region(900, "192.0.2.1", "192.0.2.2"),
        901: region(901, "192.0.2.3"),
        902: region(902, "192.0.2.4", no_measure_no_home=True),
    }
)


class Server:
    """Answers STUN probes with a mapped address chosen per destination."""

    def __init__(self, nc: Netcheck, mapped: dict[str, str], rtt: dict[str, float]):
        self.nc, self.mapped, self.rtt = nc, mapped, rtt
        self.sent: list[tuple[float, AddrPort]] = []

    def run(self, start: float, until: float) -> None:
        pending: list[tuple[float, bytes]] = []
        t = start
        for _ in range(1000):
            for data, dst in self.nc.datagrams_to_send():
                self.sent.append((t, dst))
                ip = str(dst.ip)
                if ip in self.mapped:
                    txid = stun.parse_request(data, require_tailnode=True)
                    m = AddrPort.parse(self.mapped[ip])
                    pending.append((t + self.rtt[ip], stun.response(txid, m.ip, m.port)))
            pending.sort(key=lambda p: p[0])
            timer = self.nc.get_timer()
            nxt = min(
                [p[0] for p in pending] + ([timer] if timer is not None else []), default=None
            )
            if nxt is None or nxt > until:
                return
            t = nxt
            if pending and pending[0][0] <= t:
                self.nc.receive_stun(pending.pop(0)[1], t)
            else:
                self.nc.handle_timer(t)
        raise AssertionError("netcheck did not settle")


def test_full_plan_probes_each_measurable_region_three_times() -> None:
    nc = Netcheck(rand())
    nc.start_report(DM, 10.0)
    srv = Server(nc, {}, {})
    srv.run(10.0, 20.0)
    by_region: dict[str, list[float]] = {}
    for t, dst in srv.sent:
        by_region.setdefault(str(dst.ip), []).append(round(t - 10.0, 3))
    # Region 900 alternates its two nodes; 902 is NoMeasureNoHome; port 3478 by default.
    assert by_region == {"192.0.2.1": [0.0, 0.2], "192.0.2.2": [0.1], "192.0.2.3": [0.0, 0.1, 0.2]}
    assert all(dst.port == 3478 for _, dst in srv.sent)
    r = nc.next_report()
    assert r is not None
    assert not r.udp
    assert r.preferred_derp == 0
    assert nc.get_timer() is None
    assert not nc.running


def test_report_times_out_at_stun_deadline() -> None:
    nc = Netcheck(rand())
    nc.start_report(DM, 0.0)
    for t in (0.0, 0.1, 0.2):
        nc.handle_timer(t)
    assert nc.get_timer() == STUN_PROBE_TIMEOUT
    nc.handle_timer(2.9)
    assert nc.running
    nc.handle_timer(STUN_PROBE_TIMEOUT)
    assert not nc.running
    r = nc.next_report()
    assert r is not None
    assert not r.udp
    assert r.global_v4 is None


def test_latency_mapping_and_preferred() -> None:
    nc = Netcheck(rand())
    nc.start_report(DM, 0.0)
    srv = Server(
        nc,
        {
            "192.0.2.1": "198.18.0.1:5000",
            "192.0.2.2": "198.18.0.1:5000",
            "192.0.2.3": "198.18.0.1:5000",
        },
        {"192.0.2.1": 0.040, "192.0.2.2": 0.040, "192.0.2.3": 0.015},
    )
    srv.run(0.0, 10.0)
    r = nc.next_report()
    assert r is not None
    assert r.udp
    assert r.ipv4
    assert r.global_v4 == AddrPort.parse("198.18.0.1:5000")
    assert r.mapping_varies_by_dest_ip is False
    assert r.region_latency == {900: pytest.approx(0.040), 901: pytest.approx(0.015)}
    assert r.preferred_derp == 901
    assert r.stun_endpoints == (AddrPort.parse("198.18.0.1:5000"),)
    # The first response in a set cancels the rest: one probe per region answered.
    assert len(srv.sent) == 2


def test_mapping_varies_by_destination() -> None:
    nc = Netcheck(rand())
    nc.start_report(DM, 0.0)
    srv = Server(
        nc,
        {"192.0.2.1": "198.18.0.1:5000", "192.0.2.3": "198.18.0.1:5001"},
        {"192.0.2.1": 0.010, "192.0.2.3": 0.020},
    )
    srv.run(0.0, 10.0)
    r = nc.next_report()
    assert r is not None
    assert r.mapping_varies_by_dest_ip is True
    # One-off addresses of a hard NAT are not advertised.
    assert r.stun_endpoints == (AddrPort.parse("198.18.0.1:5000"),)


def test_incremental_report_probes_home_hardest() -> None:
    nc = Netcheck(rand())
    answers = {"192.0.2.1": "198.18.0.1:5000", "192.0.2.3": "198.18.0.1:5000"}
    rtt = {"192.0.2.1": 0.040, "192.0.2.3": 0.010}
    nc.start_report(DM, 0.0)
    Server(nc, answers, rtt).run(0.0, 10.0)
    assert nc.next_report() is not None
    nc.start_report(DM, 30.0)  # within 5 min: incremental
    srv = Server(nc, {}, {})
    srv.run(30.0, 40.0)
    r = nc.next_report()
    assert r is not None
    assert not r.full
    # Home 901 gets 4 tries at 0, 1.2x, 2x1.2x+0.1, 3x1.2x+0.15 of its 10 ms latency;
    # the other region (in the fastest two) gets 2 tries.
    times = [round(t - 30.0, 4) for t, dst in srv.sent if str(dst.ip) == "192.0.2.3"]
    assert times == [0.0, 0.012, 0.124, 0.186]
    assert len([d for _, d in srv.sent if str(d.ip).startswith("192.0.2.")]) == 6


def test_unknown_or_garbage_stun_is_ignored() -> None:
    nc = Netcheck(rand())
    nc.start_report(DM, 0.0)
    nc.handle_timer(0.0)
    assert nc.datagrams_to_send()
    assert not nc.receive_stun(stun.response(bytes(12), AddrPort.parse("1.2.3.4:5").ip, 5), 0.1)
    assert not nc.receive_stun(b"junk", 0.1)


def rep(lat: dict[int, float], started: float = 0.0) -> Report:
    return Report(started, True, True, False, None, None, None, lat, lat, {}, 0, (), True)


@pytest.mark.parametrize(
    ("prev", "old_lat", "new_lat", "want"),
    [
        (0, None, 0.030, 901),  # no previous home: best wins
        (900, 0.030, 0.025, 900),  # 5 ms better: under the 10 ms floor
        (900, 0.030, 0.021, 900),  # 9 ms and 30 %: not enough
        (900, 0.100, 0.080, 900),  # 20 ms but only 20 %
        (900, 0.100, 0.060, 901),  # 40 ms and 40 %: switch
        (900, None, 0.050, 901),  # old home not measured and not heard: switch
    ],
)
def test_preferred_derp_hysteresis(prev, old_lat, new_lat, want) -> None:
    lat = {901: new_lat}
    if old_lat is not None:
        lat[900] = old_lat
    r = rep(lat, started=100.0)
    assert choose_preferred_derp([r], r, prev, {}, None, 100.0) == want


def test_preferred_derp_keeps_heard_home_without_latency() -> None:
    r = rep({901: 0.050}, started=100.0)
    # Heard a DERP frame from 900 since the report started: it stays accessible, and a
    # 0-latency "current" means any candidate fails the 10 ms test against it.
    assert choose_preferred_derp([r], r, 900, {}, 101.0, 102.0) == 900
    empty = rep({}, started=200.0)
    assert choose_preferred_derp([empty], empty, 900, {}, 150.0, 200.0) == 900
    assert choose_preferred_derp([empty], empty, 900, {}, 10.0, 200.0) == 0


def test_preferred_derp_uses_history_and_scores() -> None:
    old = rep({900: 0.010, 901: 0.050}, started=0.0)
    cur = rep({900: 0.080, 901: 0.050}, started=60.0)
    # 900's best recent latency (10 ms) still wins although this report saw 80 ms.
    assert choose_preferred_derp([old, cur], cur, 0, {}, None, 60.0) == 900
    # A score of 10 makes 900 look 100 ms away.
    assert choose_preferred_derp([old, cur], cur, 0, {900: 10.0}, None, 60.0) == 901


def test_derpmap_from_json() -> None:
    dm = FrozenDERPMap.from_json(
        {
            "Regions": {
                "900": {
                    "RegionID": 900,
                    "RegionCode": "home",
                    "Nodes": [
                        {
                            "Name": "900a",
                            "RegionID": 900,
                            "HostName": "d",
                            "IPv4": "192.0.2.9",
                            "STUNPort": 3479,
                        }
                    ],
                },
                "901": None,
            },
            "HomeParams": {"RegionScore": {"900": 0.5}},
        }
    )
    assert list(dm.regions) == [900]
    node = dm.regions[900].nodes[0]
    assert str(node.stun_ip(4)) == "192.0.2.9"
    assert node.stun_ip(6) is None
    assert node.stun_port_or_default() == 3479
    assert dm.region_score == {900: 0.5}
    with pytest.raises(ValueError, match="DERPMap"):
        FrozenDERPMap.from_json({"Regions": {"1": {"Nodes": [{}]}}})


def test_third_region_arms_the_enough_timer() -> None:
    dm = FrozenDERPMap({900 + i: region(900 + i, f"192.0.2.{i + 1}") for i in range(5)})
    nc = Netcheck(rand())
    nc.start_report(dm, 0.0)
    srv = Server(
        nc,
        {f"192.0.2.{i}": "198.18.0.1:5000" for i in (1, 2, 3)},  # two regions never answer
        {"192.0.2.1": 0.010, "192.0.2.2": 0.020, "192.0.2.3": 0.030},
    )
    srv.run(0.0, 10.0)
    r = nc.next_report()
    assert r is not None
    assert sorted(r.region_latency) == [900, 901, 902]
    # Finished at 30 ms (third answer) + 2 x 30 ms (full report), not at the 3 s deadline.
    assert max(t for t, _ in srv.sent) < 0.3
    assert nc.get_timer() is None


def test_ipv6_probes_and_global_v6() -> None:
    dm = FrozenDERPMap(
        {
            900: FrozenDERPRegion(
                900, nodes=(FrozenDERPNode("900a", 900, ipv4="192.0.2.1", ipv6="2001:db8::1"),)
            )
        }
    )
    nc = Netcheck(rand())
    nc.start_report(dm, 0.0, have_v4=True, have_v6=True)
    srv = Server(
        nc,
        {"192.0.2.1": "198.18.0.1:5000", "2001:db8::1": "[2001:db8:1::5]:6000"},
        {"192.0.2.1": 0.010, "2001:db8::1": 0.012},
    )
    srv.run(0.0, 10.0)
    r = nc.next_report()
    assert r is not None
    assert r.ipv6
    assert r.global_v6 == AddrPort.parse("[2001:db8:1::5]:6000")
    assert r.region_v6_latency == {900: pytest.approx(0.012)}
    assert r.stun_endpoints == (AddrPort.parse("198.18.0.1:5000"), r.global_v6)
    # v6-only STUN target skipped on a v4-only machine, and "none" disables a family.
    assert FrozenDERPNode("x", 1, ipv4="none").stun_ip(4) is None
    assert FrozenDERPNode("x", 1, ipv4="192.0.2.1", stun_port=-1).stun_ip(4) is None


def test_net_info() -> None:
    from meshscale.magicsock import net_info
    from meshscale.tailcfg import to_json

    assert net_info(None, 900).PreferredDERP == 900
    r = Report(
        0.0,
        True,
        True,
        True,
        None,
        None,
        False,
        {900: 0.01},
        {900: 0.01},
        {900: 0.02},
        900,
        (),
        True,
    )
    ni = net_info(r, 901, os_has_ipv6=True)
    assert ni.PreferredDERP == 901  # the Conn's home, not the report's suggestion
    assert ni.DERPLatency == {"900-v4": 0.01, "900-v6": 0.02}
    js = to_json(ni)
    assert js["WorkingUDP"] is True
    assert js["MappingVariesByDestIP"] is False


def test_empty_map_finishes_at_once_and_idle_calls_are_harmless() -> None:
    nc = Netcheck(rand())
    nc.handle_timer(0.0)  # nothing running
    assert not nc.receive_stun(b"x" * 20, 0.0)
    assert nc.get_timer() is None
    nc.start_report(FrozenDERPMap(), 0.0)
    r = nc.next_report()
    assert r is not None
    assert not r.udp
    assert nc.next_report() is None


def test_probes_that_add_nothing_are_skipped() -> None:
    # Two nodes answer the same mapping: the second try of region 900 is not needed
    # once latency and "mapping varies" are known, so only one probe per set leaves.
    dm = FrozenDERPMap({900: region(900, "192.0.2.1", "192.0.2.2"), 901: region(901, "192.0.2.3")})
    nc = Netcheck(rand())
    nc.start_report(dm, 0.0)
    srv = Server(
        nc,
        dict.fromkeys(("192.0.2.1", "192.0.2.2", "192.0.2.3"), "198.18.0.1:5000"),
        {"192.0.2.1": 0.150, "192.0.2.2": 0.150, "192.0.2.3": 0.001},
    )
    srv.run(0.0, 10.0)
    r = nc.next_report()
    assert r is not None
    assert r.mapping_varies_by_dest_ip is False
    # 900 needs 150 ms: its second try (t=100 ms) leaves before the first answer.
    assert [str(d.ip) for _, d in srv.sent].count("192.0.2.3") == 1


def test_incremental_plan_dual_stack_and_home_outside_top3() -> None:
    dm = FrozenDERPMap(
        {
            900 + i: FrozenDERPRegion(
                900 + i,
                nodes=(
                    FrozenDERPNode(
                        f"{i}a", 900 + i, ipv4=f"192.0.2.{i + 1}", ipv6=f"2001:db8::{i + 1}"
                    ),
                ),
            )
            for i in range(6)
        }
    )
    nc = Netcheck(rand())
    answers = {f"192.0.2.{i + 1}": "198.18.0.1:5000" for i in range(6)}
    answers |= {f"2001:db8::{i + 1}": "[2001:db8:9::1]:5000" for i in range(6)}
    rtt = {ip: 0.010 * (int(ip.rsplit(".", 1)[-1].rsplit(":", 1)[-1]) + 1) for ip in answers}
    nc.start_report(dm, 0.0, have_v6=True)
    Server(nc, answers, rtt).run(0.0, 10.0)
    first = nc.next_report()
    assert first is not None
    assert first.preferred_derp == 900
    # Pretend the home is the slowest region: it is probed although outside the top 3.
    nc._last = replace(first, preferred_derp=905)
    nc.start_report(dm, 30.0, have_v6=True)
    srv = Server(nc, {}, {})
    srv.run(30.0, 40.0)
    probed = {(str(d.ip)) for _, d in srv.sent}
    assert "192.0.2.6" in probed and "2001:db8::6" in probed  # home, both families
    assert "192.0.2.5" not in probed  # 5th region: neither top 3 nor home
    # The third region alternates to one family only on dual-stack machines.
    assert ("192.0.2.3" in probed) != ("2001:db8::3" in probed)


def test_retries_without_new_information_are_skipped() -> None:
    dm = FrozenDERPMap(
        {
            900: FrozenDERPRegion(
                900, nodes=(FrozenDERPNode("a", 900, ipv4="192.0.2.1", ipv6="2001:db8::1"),)
            ),
            901: FrozenDERPRegion(
                901, nodes=(FrozenDERPNode("b", 901, ipv4="192.0.2.2", ipv6="2001:db8::2"),)
            ),
            902: FrozenDERPRegion(
                902, nodes=(FrozenDERPNode("c", 902, ipv4="192.0.2.3"),)
            ),  # no IPv6
            903: FrozenDERPRegion(
                903, nodes=(FrozenDERPNode("d", 903, ipv4="192.0.2.4", ipv6="2001:db8::4"),)
            ),
        }
    )
    nc = Netcheck(rand())
    nc.start_report(dm, 0.0, have_v6=True)
    answers = {
        "192.0.2.1": "198.18.0.1:5000",
        "2001:db8::1": "[2001:db8:9::1]:5000",
        "192.0.2.2": "198.18.0.1:5000",
        "2001:db8::4": "[2001:db8:9::1]:5000",
    }
    rtt = dict.fromkeys(answers, 0.010) | {"2001:db8::4": 0.060}
    srv = Server(nc, answers, rtt)
    srv.run(0.0, 10.0)
    assert nc.last_report is not None
    # 901's IPv6 never answers, but once 901 has a latency and some region gave an
    # IPv6 mapping, its retries would teach nothing: only the first try left.
    assert [str(d.ip) for _, d in srv.sent].count("2001:db8::2") == 1
    assert "2001:db8::3" not in {str(d.ip) for _, d in srv.sent}
    # Region 902 never answers: retried at 100 ms; the third region to answer (903 at
    # 60 ms) ends the report at 60 + 2 x 60 ms, before the 200 ms try.
    assert [str(d.ip) for _, d in srv.sent].count("192.0.2.3") == 2
    # Likewise 903's IPv4 retries: measured over IPv6, and "mapping varies" is settled.
    assert [str(d.ip) for _, d in srv.sent].count("192.0.2.4") == 1


def test_incremental_without_ipv6_history_and_break_after_top3() -> None:
    dm = FrozenDERPMap({900 + i: region(900 + i, f"192.0.2.{i + 1}") for i in range(5)})
    nc = Netcheck(rand())
    nc.note_derp_frame(900, 0.0)
    answers = {f"192.0.2.{i + 1}": "198.18.0.1:5000" for i in range(5)}
    rtt = {f"192.0.2.{i + 1}": 0.010 * (i + 1) for i in range(5)}
    nc.start_report(dm, 0.0)
    Server(nc, answers, rtt).run(0.0, 10.0)
    assert nc.next_report().preferred_derp == 900  # type: ignore[union-attr]
    nc.start_report(dm, 30.0, have_v6=True)  # the machine gained IPv6 since
    srv = Server(nc, {}, {})
    srv.run(30.0, 40.0)
    probed = [str(d.ip) for _, d in srv.sent]
    # Home (fastest) 4 tries, the runner-up 2, the third 1; no IPv6 without IPv6 history.
    assert sorted(set(probed)) == ["192.0.2.1", "192.0.2.2", "192.0.2.3"]
    assert probed.count("192.0.2.1") == 4
    assert probed.count("192.0.2.2") == 2
    assert probed.count("192.0.2.3") == 1


def test_https_fallback_when_udp_is_blocked() -> None:
    dm = FrozenDERPMap(
        {
            900: region(900, "192.0.2.1"),
            901: region(901, "192.0.2.2"),
            902: region(902, "192.0.2.3", avoid=True),  # never measured over HTTPS
            903: FrozenDERPRegion(
                903, nodes=(FrozenDERPNode("s", 903, ipv4="192.0.2.4", stun_only=True),)
            ),
        }
    )
    nc = Netcheck(rand(), https_fallback=True)
    nc.start_report(dm, 0.0)
    for t in (0.0, 0.1, 0.2):
        nc.handle_timer(t)
    nc.handle_timer(STUN_PROBE_TIMEOUT)  # STUN phase over, nothing answered
    assert nc.running
    assert nc.https_probes_to_send() == [900, 901]
    assert nc.get_timer() == 5.0
    nc.receive_stun(b"late", 3.1)  # ignored
    nc.receive_https_latency(902, 0.001, 3.1)  # not asked for: ignored
    nc.receive_https_latency(900, 0.080, 3.2)
    assert nc.running
    nc.receive_https_latency(901, 0.030, 3.3)
    r = nc.next_report()
    assert r is not None
    assert not r.udp
    assert r.region_latency == {900: 0.080, 901: 0.030}
    assert r.region_v4_latency == {}
    assert r.preferred_derp == 901


def test_https_fallback_deadline_and_failures() -> None:
    nc = Netcheck(rand(), https_fallback=True)
    nc.start_report(FrozenDERPMap({900: region(900, "192.0.2.1")}), 0.0)
    nc.handle_timer(STUN_PROBE_TIMEOUT)
    assert nc.https_probes_to_send() == [900]
    nc.handle_timer(4.0)
    assert nc.running
    nc.handle_timer(5.0)  # the whole-report deadline
    r = nc.next_report()
    assert r is not None
    assert r.region_latency == {}
    nc.start_report(FrozenDERPMap({900: region(900, "192.0.2.1")}), 10.0)
    nc.handle_timer(13.0)
    nc.receive_https_latency(900, None, 13.1)  # failed probe: no latency, report done
    r = nc.next_report()
    assert r is not None
    assert r.region_latency == {}


def test_stun_only_region_is_measured_but_never_home() -> None:
    """A region of STUN-only nodes relays nothing: it counts for latency and for
    MappingVariesByDestIP (hard-NAT probing needs two STUN addresses) but is never home."""
    r = rep({900: 0.030, 901: 0.001}, started=100.0)
    assert choose_preferred_derp([r], r, 0, {}, None, 100.0, homes={900}) == 900
    assert choose_preferred_derp([r], r, 0, {}, None, 100.0) == 901
    only = rep({901: 0.001}, started=100.0)
    assert choose_preferred_derp([only], only, 0, {}, None, 100.0, homes={900}) == 0
