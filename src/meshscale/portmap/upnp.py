"""UPnP IGD: SSDP discovery, the device description, and the WAN*Connection SOAP actions.

The exchange (UPnP Device Architecture 1.1; IGD WANIPConnection:1/2, WANPPPConnection:1)::

    1. UDP M-SEARCH to 239.255.255.250:1900; each answer is an HTTP-over-UDP 200 with LOCATION.
    2. HTTP GET LOCATION: device description XML; its serviceList names a WANIPConnection or
       WANPPPConnection service and that service's controlURL.
    3. HTTP POST controlURL, SOAP: GetExternalIPAddress, AddPortMapping, DeletePortMapping.

Everything a gateway sends is untrusted: bodies are size-capped before they are parsed, XML with a
DOCTYPE (and so any entity) is refused, and a control URL must stay on the described host over
plain HTTP. HTTP framing goes through h11. Pure: no I/O. Every parser raises only ``ParseError``.
"""

from __future__ import annotations

import ipaddress
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit
from xml.sax.saxutils import escape

import h11

from .errors import ParseError

SSDP_ADDR = "239.255.255.250"
SSDP_PORT = 1900
IGD_DEVICE = "urn:schemas-upnp-org:device:InternetGatewayDevice:1"
# Preferred first: IGDv2's WANIPConnection:2 also speaks every :1 action we use.
WAN_SERVICES = (
    "urn:schemas-upnp-org:service:WANIPConnection:2",
    "urn:schemas-upnp-org:service:WANIPConnection:1",
    "urn:schemas-upnp-org:service:WANPPPConnection:1",
)
MAX_SSDP = 2048  # bytes of one SSDP answer
MAX_BODY = 64 * 1024  # bytes of a description or SOAP answer
_SOAP_ENV = "http://schemas.xmlsoap.org/soap/envelope/"


@dataclass(frozen=True, slots=True)
class SSDPResponse:
    location: str
    st: str
    usn: str
    server: str


@dataclass(frozen=True, slots=True)
class WANService:
    service_type: str
    control_url: str  # absolute http:// URL on the described host


@dataclass(frozen=True, slots=True)
class HTTPResponse:
    status: int
    body: bytes


@dataclass(frozen=True, slots=True)
class SOAPFault:
    code: int  # UPnPError errorCode, 0 if the fault carried none
    description: str


def m_search(st: str = IGD_DEVICE, mx: int = 2) -> bytes:
    """The SSDP M-SEARCH datagram (UDA 1.1 §1.3.2)."""
    return (
        "M-SEARCH * HTTP/1.1\r\n"
        f"HOST: {SSDP_ADDR}:{SSDP_PORT}\r\n"
        'MAN: "ssdp:discover"\r\n'
        f"MX: {mx}\r\n"
        f"ST: {st}\r\n\r\n"
    ).encode("ascii")


def parse_ssdp_response(data: bytes) -> SSDPResponse:
    """Parse one SSDP search answer; its LOCATION must be an http:// URL."""
    if len(data) > MAX_SSDP:
        raise ParseError(f"SSDP answer too long: {len(data)} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ParseError(f"SSDP answer is not UTF-8: {e}") from None
    head, _, _ = text.partition("\r\n\r\n")
    lines = head.split("\r\n")
    status = lines[0].split(None, 2)
    if len(status) < 2 or not status[0].startswith("HTTP/1.") or status[1] != "200":
        raise ParseError(f"SSDP answer is not an HTTP 200: {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    location = headers.get("location", "")
    if not _is_http_url(location):
        raise ParseError(f"SSDP LOCATION is not an http URL: {location[:80]!r}")
    return SSDPResponse(
        location, headers.get("st", ""), headers.get("usn", ""), headers.get("server", "")
    )


def _is_http_url(url: str) -> bool:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return False
    return parts.scheme == "http" and bool(parts.hostname) and port != 0


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def parse_xml(body: bytes) -> ET.Element:
    """Parse untrusted XML: capped in size, no DOCTYPE (so no entity expansion at all)."""
    if len(body) > MAX_BODY:
        raise ParseError(f"XML body too long: {len(body)} bytes")
    if b"<!doctype" in body.lower() or b"<!entity" in body.lower():
        raise ParseError("XML with a DOCTYPE or ENTITY is refused")
    try:
        return ET.fromstring(body)
    except (ET.ParseError, ValueError) as e:
        raise ParseError(f"bad XML: {e}") from None


def _child_text(elem: ET.Element, name: str) -> str:
    for child in elem:
        if _local(child.tag) == name:
            return (child.text or "").strip()
    return ""


def parse_description(body: bytes, location: str) -> WANService:
    """Find the best WAN connection service in a device description and its control URL."""
    if not _is_http_url(location):
        raise ParseError(f"description location is not an http URL: {location[:80]!r}")
    root = parse_xml(body)
    base = _child_text(root, "URLBase") or location
    if not _is_http_url(base) or urlsplit(base).hostname != urlsplit(location).hostname:
        base = location
    found: dict[str, str] = {}
    for elem in root.iter():
        if _local(elem.tag) != "service":
            continue
        stype = _child_text(elem, "serviceType")
        control = _child_text(elem, "controlURL")
        if stype in WAN_SERVICES and control and stype not in found:
            found[stype] = control
    for stype in WAN_SERVICES:
        if stype not in found:
            continue
        url = urljoin(base, found[stype])
        if not _is_http_url(url) or urlsplit(url).hostname != urlsplit(location).hostname:
            raise ParseError(f"control URL {url[:80]!r} leaves the described host")
        return WANService(stype, url)
    raise ParseError("device description names no WANIPConnection or WANPPPConnection service")


def _request(method: str, url: str, headers: list[tuple[str, str]], body: bytes) -> bytes:
    parts = urlsplit(url)
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    conn = h11.Connection(our_role=h11.CLIENT)
    all_headers = [("Host", parts.netloc), ("Connection", "close"), *headers]
    if method == "POST":
        all_headers.append(("Content-Length", str(len(body))))
    out = conn.send(h11.Request(method=method, target=target, headers=all_headers)) or b""
    if body:
        out += conn.send(h11.Data(data=body)) or b""
    return out + (conn.send(h11.EndOfMessage()) or b"")


def description_request(location: str) -> bytes:
    """The HTTP GET of a device description."""
    return _request("GET", location, [("Accept", "text/xml")], b"")


def soap_request(service: WANService, action: str, args: list[tuple[str, str]]) -> bytes:
    """The HTTP POST of one SOAP action to the service's control URL."""
    params = "".join(f"<{k}>{escape(v)}</{k}>" for k, v in args)
    body = (
        '<?xml version="1.0"?>\r\n'
        f'<s:Envelope xmlns:s="{_SOAP_ENV}" s:encodingStyle="http://schemas.xmlsoap.org/soap/encoding/">'
        f'<s:Body><u:{action} xmlns:u="{service.service_type}">{params}</u:{action}></s:Body>'
        "</s:Envelope>\r\n"
    ).encode()
    headers = [
        ("Content-Type", 'text/xml; charset="utf-8"'),
        ("SOAPAction", f'"{service.service_type}#{action}"'),
    ]
    return _request("POST", service.control_url, headers, body)


def add_port_mapping(
    service: WANService,
    internal_client: ipaddress.IPv4Address,
    internal_port: int,
    external_port: int,
    lease: int,
    description: str = "meshscale",
) -> bytes:
    args = [
        ("NewRemoteHost", ""),
        ("NewExternalPort", str(external_port)),
        ("NewProtocol", "UDP"),
        ("NewInternalPort", str(internal_port)),
        ("NewInternalClient", str(internal_client)),
        ("NewEnabled", "1"),
        ("NewPortMappingDescription", description),
        ("NewLeaseDuration", str(lease)),
    ]
    return soap_request(service, "AddPortMapping", args)


def delete_port_mapping(service: WANService, external_port: int) -> bytes:
    args = [("NewRemoteHost", ""), ("NewExternalPort", str(external_port)), ("NewProtocol", "UDP")]
    return soap_request(service, "DeletePortMapping", args)


def get_external_ip_address(service: WANService) -> bytes:
    return soap_request(service, "GetExternalIPAddress", [])


def parse_http_response(data: bytes) -> HTTPResponse:
    """Parse a whole HTTP/1.x response (the server closed the connection after it)."""
    conn = h11.Connection(our_role=h11.CLIENT)
    conn.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(data)
    conn.receive_data(b"")
    status = 0
    body = bytearray()
    try:
        while True:
            event = conn.next_event()
            if isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > MAX_BODY:
                    raise ParseError(f"HTTP body longer than {MAX_BODY} bytes")
            elif isinstance(event, h11.EndOfMessage):
                break
            elif event is h11.NEED_DATA or isinstance(event, h11.ConnectionClosed):
                raise ParseError("HTTP response truncated")
            elif event is h11.PAUSED:
                break
    except h11.RemoteProtocolError as e:
        raise ParseError(f"bad HTTP response: {e}") from None
    return HTTPResponse(status, bytes(body))


def parse_soap_response(response: HTTPResponse, action: str) -> dict[str, str] | SOAPFault:
    """The output arguments of ``action``, or the UPnP fault the gateway answered with."""
    root = parse_xml(response.body)
    body = next((e for e in root if _local(e.tag) == "Body"), None)
    if _local(root.tag) != "Envelope" or body is None:
        raise ParseError("SOAP answer has no Envelope/Body")
    for elem in body:
        name = _local(elem.tag)
        if name == "Fault":
            code, desc = 0, _child_text(elem, "faultstring")
            for sub in elem.iter():
                if _local(sub.tag) == "UPnPError":
                    text = _child_text(sub, "errorCode")
                    code = int(text) if text.isdigit() and len(text) < 6 else 0
                    desc = _child_text(sub, "errorDescription") or desc
            return SOAPFault(code, desc[:200])
        if name == action + "Response":
            if response.status != 200:
                raise ParseError(f"SOAP {action} answered HTTP {response.status}")
            return {_local(c.tag): (c.text or "").strip() for c in elem}
    raise ParseError(
        f"SOAP answer holds neither {action}Response nor a Fault (HTTP {response.status})"
    )


def parse_external_ip(response: HTTPResponse) -> ipaddress.IPv4Address | SOAPFault:
    out = parse_soap_response(response, "GetExternalIPAddress")
    if isinstance(out, SOAPFault):
        return out
    try:
        return ipaddress.IPv4Address(out.get("NewExternalIPAddress", ""))
    except ValueError:
        raise ParseError("GetExternalIPAddress answered no IPv4 address") from None
