"""The port-mapping client: probe the gateway, map one UDP port, renew it, release it.

Performs no I/O. Driven by: user calls (``start``, ``release``), datagrams from the gateway's
port 5351 and from SSDP answers (``receive_datagram``), whole HTTP answers (``receive_http``) and
the timer. It emits datagrams to send, HTTP requests to make (to a URL the gateway described, on
the gateway's own host) and the current ``mapping``.

Order, as tailscale's portmapper: probe all three at once; map with PCP if the gateway answered
PCP, else NAT-PMP, else UPnP IGD; a protocol that fails or stays silent falls back to the next.
A mapping is renewed at half its lifetime; ``release`` deletes it.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from enum import Enum

from . import natpmp, pcp, upnp
from .errors import ParseError

PROBE_TIMEOUT = 1.5  # seconds the gateway has to answer the probes
REQUEST_TIMEOUT = 2.0  # seconds one mapping attempt may take
RETRY_AFTER = 60.0  # seconds before probing again when nothing could be mapped
LIFETIME = 7200  # seconds asked for

Addr = tuple[ipaddress.IPv4Address, int]


class Protocol(Enum):
    PCP = "PCP"
    PMP = "NAT-PMP"
    UPNP = "UPnP"


@dataclass(frozen=True, slots=True)
class Mapping:
    protocol: Protocol
    external: Addr
    internal_port: int
    expires: float  # the driver's clock
    upnp_service: upnp.WANService | None = None


@dataclass(frozen=True, slots=True)
class HTTPRequest:
    tag: str  # "description", "add", "extip" or "delete": echoed back by receive_http
    url: str
    data: bytes


class PortMapper:
    """Maps ``local_port`` of ``client`` on ``gateway``. ``nonce`` is the 12-byte PCP nonce."""

    def __init__(
        self,
        gateway: ipaddress.IPv4Address,
        client: ipaddress.IPv4Address,
        local_port: int,
        nonce: bytes,
        *,
        lifetime: int = LIFETIME,
    ) -> None:
        if len(nonce) != pcp.NONCE_LEN:
            raise ValueError("PCP nonce must be 12 bytes")
        self.gateway = gateway
        self.client = client
        self.local_port = local_port
        self.lifetime = lifetime
        self._nonce = nonce
        self._probe_done = False
        self.mapping: Mapping | None = None
        self.errors: dict[str, int] = {}
        self._seen: set[Protocol] = set()
        self._pmp_external: ipaddress.IPv4Address | None = None
        self._service: upnp.WANService | None = None
        self._location: str | None = None
        self._trying: Protocol | None = None
        self._tried: set[Protocol] = set()
        self._upnp_port = 0
        self._deadline: float | None = None
        self._renew_at: float | None = None
        self._udp_out: list[tuple[bytes, Addr]] = []
        self._http_out: list[HTTPRequest] = []
        self._probing = False
        self._released = False

    @property
    def have(self) -> dict[Protocol, bool] | None:
        """Which protocols the gateway answered; None until the first probe ended (netcheck's
        "not checked"). Answers arriving after PCP ended the probe early still count."""
        return {p: p in self._seen for p in Protocol} if self._probe_done else None

    # ---- user calls ----

    def start(self, now: float) -> None:
        """Probe the gateway for PCP, NAT-PMP and UPnP IGD."""
        self._released = False
        self._probing = True
        self._seen.clear()
        self._tried.clear()
        self._location = None
        self._service = None
        self._trying = None
        gw = self.gateway
        self._udp_out.append((pcp.announce_request(self.client), (gw, pcp.PORT)))
        self._udp_out.append((natpmp.external_address_request(), (gw, natpmp.PORT)))
        search = upnp.m_search()
        self._udp_out.append((search, (ipaddress.IPv4Address(upnp.SSDP_ADDR), upnp.SSDP_PORT)))
        self._udp_out.append((search, (gw, upnp.SSDP_PORT)))
        self._deadline = now + PROBE_TIMEOUT

    def release(self) -> None:
        """Delete the mapping (on ``down``); nothing more is sent after this."""
        m, self.mapping = self.mapping, None
        self._released = True
        self._deadline = self._renew_at = None
        if m is None:
            return
        if m.protocol is Protocol.PCP:
            self._udp_out.append(
                (
                    pcp.release_request(self.client, m.internal_port, self._nonce),
                    (self.gateway, pcp.PORT),
                )
            )
        elif m.protocol is Protocol.PMP:
            self._udp_out.append(
                (natpmp.release_request(m.internal_port), (self.gateway, natpmp.PORT))
            )
        elif m.upnp_service is not None:
            req = upnp.delete_port_mapping(m.upnp_service, m.external[1])
            self._http_out.append(HTTPRequest("delete", m.upnp_service.control_url, req))

    # ---- inputs ----

    def receive_datagram(self, data: bytes, src: Addr, now: float) -> None:
        try:
            if src[1] == upnp.SSDP_PORT or data.startswith(b"HTTP/"):
                self._on_ssdp(upnp.parse_ssdp_response(data), now)
            elif src[0] != self.gateway or src[1] != pcp.PORT:
                self._count("foreign_datagram")
            elif data[:1] == bytes((pcp.VERSION,)):
                self._on_pcp(pcp.parse_response(data), now)
            else:
                self._on_pmp(natpmp.parse_response(data), now)
        except ParseError:
            self._count("parse_error")

    def receive_http(self, tag: str, data: bytes | None, now: float) -> None:
        """A whole HTTP answer to a request from ``http_to_send``; None if it failed."""
        if tag == "delete" or self._released:
            return
        if data is None:
            self._count("http_error")
            self._fail(Protocol.UPNP, now)
            return
        try:
            resp = upnp.parse_http_response(data)
            if tag == "description":
                assert self._location is not None
                self._service = upnp.parse_description(resp.body, self._location)
                self._seen.add(Protocol.UPNP)
                if self._trying is Protocol.UPNP:
                    self._request_upnp()
                elif not self._probing and self.mapping is None and self._trying is None:
                    self._next(now)  # the description came after the probe ended
            elif tag == "add":
                out = upnp.parse_soap_response(resp, "AddPortMapping")
                if isinstance(out, upnp.SOAPFault):
                    self._count(f"upnp_fault_{out.code}")
                    self._fail(Protocol.UPNP, now)
                    return
                assert self._service is not None
                req = upnp.get_external_ip_address(self._service)
                self._http_out.append(HTTPRequest("extip", self._service.control_url, req))
            elif tag == "extip":
                ip = upnp.parse_external_ip(resp)
                if isinstance(ip, upnp.SOAPFault) or self._service is None:
                    self._fail(Protocol.UPNP, now)
                    return
                self._mapped(Protocol.UPNP, (ip, self._upnp_port), self.lifetime, now)
        except ParseError:
            self._count("parse_error")
            self._fail(Protocol.UPNP, now)

    def handle_timer(self, now: float) -> None:
        if self._renew_at is not None and now >= self._renew_at:
            self._renew_at = None
            self._trying = None
            self._tried.clear()
            self._next(now)
        if self._deadline is None or now < self._deadline:
            return
        self._deadline = None
        if self._probing:
            self._end_probe(now)
        elif self._trying is not None:
            self._count("timeout")
            self._fail(self._trying, now)
        elif self.mapping is None and not self._released:
            self.start(now)

    # ---- outputs ----

    def get_timer(self) -> float | None:
        times = [t for t in (self._deadline, self._renew_at) if t is not None]
        return min(times) if times else None

    def datagrams_to_send(self) -> list[tuple[bytes, Addr]]:
        out, self._udp_out = self._udp_out, []
        return out

    def http_to_send(self) -> list[HTTPRequest]:
        out, self._http_out = self._http_out, []
        return out

    # ---- internals ----

    def _count(self, what: str) -> None:
        self.errors[what] = self.errors.get(what, 0) + 1

    def _on_ssdp(self, resp: upnp.SSDPResponse, now: float) -> None:
        if self._location is None:  # the multicast and the unicast search both answer
            self._location = resp.location
            self._http_out.append(
                HTTPRequest("description", resp.location, upnp.description_request(resp.location))
            )

    def _on_pcp(self, resp: pcp.Response, now: float) -> None:
        if isinstance(resp, pcp.VersionMismatch):
            return  # a NAT-PMP-only gateway: its answer to our NAT-PMP probe will say so
        self._seen.add(Protocol.PCP)
        if self._probing:
            self._end_probe(now)  # PCP is preferred: no need to wait for the others
            return
        if not isinstance(resp, pcp.MapResponse) or self._trying is not Protocol.PCP:
            return
        if resp.nonce != self._nonce or resp.internal_port != self.local_port:
            self._count("pcp_mismatch")
            return
        if resp.result != pcp.RESULT_SUCCESS or not isinstance(
            resp.external_address, ipaddress.IPv4Address
        ):
            self._count(f"pcp_{resp.reason}")
            self._fail(Protocol.PCP, now)
            return
        self._mapped(Protocol.PCP, (resp.external_address, resp.external_port), resp.lifetime, now)

    def _on_pmp(self, resp: natpmp.Response, now: float) -> None:
        if isinstance(resp, natpmp.ErrorResponse):
            if resp.opcode == natpmp.OP_EXTERNAL_ADDRESS and resp.result == 1:
                self._seen.add(Protocol.PMP)  # RFC 6887 §9: the NAT-PMP answer to our PCP probe
                return
            self._count(f"pmp_{resp.reason}")
            if resp.opcode == natpmp.OP_MAP_UDP and self._trying is Protocol.PMP:
                self._fail(Protocol.PMP, now)
            return
        self._seen.add(Protocol.PMP)
        if isinstance(resp, natpmp.ExternalAddressResponse):
            self._pmp_external = resp.address
            return
        if self._trying is not Protocol.PMP or resp.internal_port != self.local_port:
            return
        if self._pmp_external is None:
            self._udp_out.append((natpmp.external_address_request(), (self.gateway, natpmp.PORT)))
            return
        self._mapped(Protocol.PMP, (self._pmp_external, resp.external_port), resp.lifetime, now)

    def _end_probe(self, now: float) -> None:
        self._probing = False
        self._probe_done = True
        self._next(now)

    def _next(self, now: float) -> None:
        """Try the best protocol the gateway offered that has not failed yet."""
        for proto in Protocol:
            if proto in self._seen and proto not in self._tried:
                self._tried.add(proto)
                self._trying = proto
                self._deadline = now + REQUEST_TIMEOUT
                self._request(proto)
                return
        self._trying = None
        self.mapping = None
        self._deadline = now + RETRY_AFTER

    def _request(self, proto: Protocol) -> None:
        gw = self.gateway
        prev = self.mapping
        if proto is Protocol.PCP:
            ext = prev.external if prev is not None and prev.protocol is proto else None
            req = pcp.map_request(
                self.client, self.local_port, self._nonce, lifetime=self.lifetime,
                external_port=ext[1] if ext else 0, external_address=ext[0] if ext else None,
            )  # fmt: skip
            self._udp_out.append((req, (gw, pcp.PORT)))
        elif proto is Protocol.PMP:
            ext_port = prev.external[1] if prev is not None and prev.protocol is proto else 0
            self._udp_out.append((natpmp.external_address_request(), (gw, natpmp.PORT)))
            req = natpmp.map_request(self.local_port, ext_port, self.lifetime)
            self._udp_out.append((req, (gw, natpmp.PORT)))
        elif self._service is not None:
            self._request_upnp()

    def _request_upnp(self) -> None:
        assert self._service is not None
        prev = self.mapping
        self._upnp_port = prev.external[1] if prev is not None else self.local_port
        req = upnp.add_port_mapping(
            self._service, self.client, self.local_port, self._upnp_port, self.lifetime
        )
        self._http_out.append(HTTPRequest("add", self._service.control_url, req))

    def _fail(self, proto: Protocol, now: float) -> None:
        if self._trying is proto:
            self._next(now)

    def _mapped(self, proto: Protocol, external: Addr, lifetime: int, now: float) -> None:
        self._trying = None
        self._deadline = None
        if lifetime <= 0 or external[1] == 0 or external[0].is_unspecified:
            self._count("empty_mapping")
            self._deadline = now + RETRY_AFTER
            self.mapping = None
            return
        service = self._service if proto is Protocol.UPNP else None
        self.mapping = Mapping(proto, external, self.local_port, now + lifetime, service)
        self._renew_at = now + max(lifetime / 2, 5.0)
