"""Prometheus text exposition of the relay's counters (served on the debug listener),
rendered by prometheus-client (io.metrics)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from ..io.http import Request, Response, Router
from ..io.metrics import CONTENT_TYPE, Family, exposition
from .server import DERPServer
from .stun_server import STUNServer

__all__ = ["CONTENT_TYPE", "mount_metrics", "render"]


def _metric(
    name: str, kind: str, help_: str, samples: Iterable[tuple[Mapping[str, str], float]]
) -> list[Family]:
    return [Family(name, kind, help_, list(samples))]


def render(derp: DERPServer, stun: STUNServer | None = None) -> str:
    r = derp.relay
    st = r.stats
    c = derp.counters
    home = sum(1 for conn in r.conns.values() if conn.preferred)
    out: list[Family] = []
    out += _metric("derp_clients", "gauge", "Connected DERP clients.", [({}, r.client_count)])
    out += _metric(
        "derp_unique_keys", "gauge", "Distinct connected node keys.", [({}, r.unique_keys)]
    )
    out += _metric("derp_home_clients", "gauge", "Clients whose home is this node.", [({}, home)])
    out += _metric("derp_mesh_peers", "gauge", "Outgoing mesh links up.", [({}, len(r.forwarders))])
    out += _metric("derp_accepts_total", "counter", "Upgraded connections.", [({}, c.accepts)])
    out += _metric("derp_logins_total", "counter", "Completed logins.", [({}, c.logins)])
    out += _metric(
        "derp_fast_starts_total",
        "counter",
        "Upgrades without the 101 (fast start).",
        [({}, c.fast_starts)],
    )
    out += _metric(
        "derp_websocket_accepts_total",
        "counter",
        "DERP-over-WebSocket upgrades.",
        [({}, c.websockets)],
    )
    out += _metric(
        "derp_login_failures_total",
        "counter",
        "Refused or failed logins by reason.",
        [({"reason": k}, v) for k, v in sorted(c.login_failures.items())],
    )
    out += _metric(
        "derp_packets_relayed_total",
        "counter",
        "Packets queued to local clients.",
        [({}, st.packets_relayed)],
    )
    out += _metric(
        "derp_bytes_relayed_total",
        "counter",
        "Payload bytes queued to local clients.",
        [({}, st.bytes_relayed)],
    )
    out += _metric(
        "derp_packets_forwarded_total",
        "counter",
        "Packets forwarded to mesh peers.",
        [({}, st.packets_forwarded)],
    )
    out += _metric(
        "derp_bytes_forwarded_total",
        "counter",
        "Bytes forwarded to mesh peers.",
        [({}, st.bytes_forwarded)],
    )
    out += _metric(
        "derp_packets_dropped_total",
        "counter",
        "Dropped packets and frames by reason.",
        [({"reason": k}, v) for k, v in sorted(st.drops.items())],
    )
    out += _metric(
        "derp_protocol_errors_total",
        "counter",
        "Connections closed for bad frames.",
        [({}, c.protocol_errors)],
    )
    if stun is not None:
        s = stun.counters
        out += _metric(
            "stun_requests_total", "counter", "STUN datagrams received.", [({}, s.requests)]
        )
        out += _metric(
            "stun_responses_total", "counter", "STUN responses sent.", [({}, s.responses)]
        )
        out += _metric(
            "stun_ignored_total",
            "counter",
            "Datagrams that were not binding requests.",
            [({}, s.ignored)],
        )
    return exposition(out).decode()


def mount_metrics(router: Router, derp: DERPServer, stun: STUNServer | None = None) -> None:
    """GET /debug/metrics and /metrics in Prometheus text format."""

    async def handler(req: Request) -> Response:
        return Response(200, render(derp, stun).encode(), content_type=CONTENT_TYPE)

    router.add("GET", "/debug/metrics", handler)
    router.add("GET", "/metrics", handler)
