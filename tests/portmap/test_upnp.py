"""meshscale.portmap.upnp: SSDP, description and SOAP parsing of untrusted gateway answers."""

from __future__ import annotations

import ipaddress

import h11
import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshscale.portmap import ParseError, upnp

LOCATION = "http://192.168.1.1:5000/rootDesc.xml"

# An SSDP answer laid out as UPnP Device Architecture 1.1 §1.3.3 describes it.
SSDP_OK = (
    b"HTTP/1.1 200 OK\r\nCACHE-CONTROL: max-age=120\r\n"
    b"ST: urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\n"
    b"USN: uuid:0000-1111::urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\n"
    b"EXT:\r\nSERVER: Debian/12 UPnP/1.1 MiniUPnPd/2.3\r\n"
    b"LOCATION: " + LOCATION.encode() + b"\r\n\r\n"
)

# A device description in the IGD:1 shape: root device, WANDevice, WANConnectionDevice.
DESCRIPTION = b"""<?xml version="1.0"?>
<root xmlns="urn:schemas-upnp-org:device-1-0">
 <specVersion><major>1</major><minor>1</minor></specVersion>
 <device>
  <deviceType>urn:schemas-upnp-org:device:InternetGatewayDevice:1</deviceType>
  <serviceList><service>
   <serviceType>urn:schemas-upnp-org:service:Layer3Forwarding:1</serviceType>
   <controlURL>/ctl/L3F</controlURL></service></serviceList>
  <deviceList><device>
   <deviceType>urn:schemas-upnp-org:device:WANDevice:1</deviceType>
   <deviceList><device>
    <deviceType>urn:schemas-upnp-org:device:WANConnectionDevice:1</deviceType>
    <serviceList>
     <service><serviceType>urn:schemas-upnp-org:service:WANPPPConnection:1</serviceType>
      <controlURL>/ctl/PPPConn</controlURL></service>
     <service><serviceType>urn:schemas-upnp-org:service:WANIPConnection:1</serviceType>
      <controlURL>/ctl/IPConn</controlURL></service>
    </serviceList>
   </device></deviceList>
  </device></deviceList>
 </device>
</root>"""

SERVICE = upnp.WANService(
    "urn:schemas-upnp-org:service:WANIPConnection:1", "http://192.168.1.1:5000/ctl/IPConn"
)


def _http(body: bytes, status: int = 200) -> bytes:
    head = f"HTTP/1.1 {status} X\r\nContent-Type: text/xml\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


def _soap(inner: str) -> bytes:
    return (
        '<?xml version="1.0"?><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/">'
        f"<s:Body>{inner}</s:Body></s:Envelope>"
    ).encode()


def test_m_search() -> None:
    msg = upnp.m_search()
    assert msg.startswith(b"M-SEARCH * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\n")
    assert b'MAN: "ssdp:discover"\r\n' in msg and msg.endswith(b"\r\n\r\n")


def test_parse_ssdp_response() -> None:
    resp = upnp.parse_ssdp_response(SSDP_OK)
    assert resp.location == LOCATION and resp.st == upnp.IGD_DEVICE
    assert "MiniUPnPd" in resp.server


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"NOTIFY * HTTP/1.1\r\n\r\n",
        b"HTTP/1.1 404 Not Found\r\nLOCATION: http://a/\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nST: x\r\n\r\n",  # no LOCATION
        b"HTTP/1.1 200 OK\r\nLOCATION: file:///etc/passwd\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nLOCATION: http://a:99999/\r\n\r\n",
        b"\xff\xfe",
        SSDP_OK + b"x" * 4096,
    ],
)
def test_parse_ssdp_rejects(data: bytes) -> None:
    with pytest.raises(ParseError):
        upnp.parse_ssdp_response(data)


def test_description_prefers_wanip_over_wanppp() -> None:
    assert upnp.parse_description(DESCRIPTION, LOCATION) == SERVICE


def test_description_honours_urlbase_on_same_host() -> None:
    doc = DESCRIPTION.replace(
        b"<specVersion>", b"<URLBase>http://192.168.1.1:6000/</URLBase><specVersion>"
    )
    assert upnp.parse_description(doc, LOCATION).control_url == "http://192.168.1.1:6000/ctl/IPConn"


def test_description_refuses_control_url_on_another_host() -> None:
    doc = DESCRIPTION.replace(b"/ctl/IPConn", b"http://10.9.9.9/ctl").replace(b"/ctl/PPPConn", b"x")
    with pytest.raises(ParseError, match="leaves the described host"):
        upnp.parse_description(doc, LOCATION)


@pytest.mark.parametrize(
    "doc",
    [
        b"",
        b"<root",
        b"<root/>",  # no WAN service
        # Entity expansion ("billion laughs") is refused before the parser runs.
        b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY a "aaaa">]><root>&a;</root>',
        b"<root>" + b"<x/>" * 20000 + b"</root>",  # over the size cap
    ],
)
def test_description_rejects(doc: bytes) -> None:
    with pytest.raises(ParseError):
        upnp.parse_description(doc, LOCATION)


def _server_reads(request: bytes) -> tuple[h11.Request, bytes]:
    """Parse our request with h11's server side: what a real gateway's HTTP stack sees."""
    conn = h11.Connection(our_role=h11.SERVER)
    conn.receive_data(request)
    req = conn.next_event()
    assert isinstance(req, h11.Request)
    body = b""
    while isinstance(ev := conn.next_event(), h11.Data):
        body += ev.data
    assert isinstance(ev, h11.EndOfMessage)
    return req, body


def test_add_port_mapping_request() -> None:
    raw = upnp.add_port_mapping(SERVICE, ipaddress.IPv4Address("192.168.1.10"), 41641, 41641, 3600)
    req, body = _server_reads(raw)
    assert req.method == b"POST" and req.target == b"/ctl/IPConn"
    headers = dict(req.headers)
    assert headers[b"host"] == b"192.168.1.1:5000"
    assert (
        headers[b"soapaction"] == b'"urn:schemas-upnp-org:service:WANIPConnection:1#AddPortMapping"'
    )
    root = upnp.parse_xml(body)
    args = {e.tag: e.text for e in root.iter() if "}" not in e.tag}
    assert args["NewInternalClient"] == "192.168.1.10" and args["NewLeaseDuration"] == "3600"
    assert args["NewProtocol"] == "UDP" and args["NewExternalPort"] == "41641"


def test_soap_arguments_are_escaped() -> None:
    raw = upnp.add_port_mapping(SERVICE, ipaddress.IPv4Address("10.0.0.1"), 1, 1, 1, "a<b>&c")
    _, body = _server_reads(raw)
    node = next(e for e in upnp.parse_xml(body).iter() if e.tag == "NewPortMappingDescription")
    assert node.text == "a<b>&c"


def test_description_request_is_a_get() -> None:
    req, _ = _server_reads(upnp.description_request(LOCATION))
    assert req.method == b"GET" and req.target == b"/rootDesc.xml"


def test_parse_external_ip() -> None:
    inner = (
        '<u:GetExternalIPAddressResponse xmlns:u="urn:schemas-upnp-org:service:WANIPConnection:1">'
        "<NewExternalIPAddress>203.0.113.7</NewExternalIPAddress></u:GetExternalIPAddressResponse>"
    )
    resp = upnp.parse_http_response(_http(_soap(inner)))
    assert upnp.parse_external_ip(resp) == ipaddress.IPv4Address("203.0.113.7")


def test_parse_soap_fault() -> None:
    # UPnP Device Architecture 1.1 §3.2.2: the UPnPError detail of a SOAP fault.
    inner = (
        "<s:Fault><faultcode>s:Client</faultcode><faultstring>UPnPError</faultstring><detail>"
        '<UPnPError xmlns="urn:schemas-upnp-org:control-1-0"><errorCode>718</errorCode>'
        "<errorDescription>ConflictInMappingEntry</errorDescription></UPnPError></detail></s:Fault>"
    )
    resp = upnp.parse_http_response(_http(_soap(inner), 500))
    assert upnp.parse_soap_response(resp, "AddPortMapping") == upnp.SOAPFault(
        718, "ConflictInMappingEntry"
    )


def test_parse_chunked_response() -> None:
    body = _soap("<u:AddPortMappingResponse xmlns:u='x'/>")
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunked += f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"
    resp = upnp.parse_http_response(chunked)
    assert upnp.parse_soap_response(resp, "AddPortMapping") == {}


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"garbage\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc",  # truncated
        _http(b"<a/>"),  # not SOAP
        _http(_soap("<u:OtherResponse xmlns:u='x'/>")),
        _http(
            _soap(
                "<u:GetExternalIPAddressResponse xmlns:u='x'><NewExternalIPAddress>nope"
                "</NewExternalIPAddress></u:GetExternalIPAddressResponse>"
            )
        ),
    ],
)
def test_parse_soap_rejects(data: bytes) -> None:
    with pytest.raises(ParseError):
        upnp.parse_external_ip(upnp.parse_http_response(data))


@given(st.binary(max_size=512))
def test_ssdp_parser_raises_only_parse_error(data: bytes) -> None:
    try:
        upnp.parse_ssdp_response(b"HTTP/1.1 200 OK\r\n" + data)
    except ParseError:
        pass


@given(st.binary(max_size=512) | st.text(max_size=300).map(str.encode))
def test_description_parser_raises_only_parse_error(data: bytes) -> None:
    for doc in (data, DESCRIPTION[: len(data)] + data):
        try:
            upnp.parse_description(doc, LOCATION)
        except ParseError:
            pass


@given(st.binary(max_size=512))
def test_http_and_soap_parsers_raise_only_parse_error(data: bytes) -> None:
    for raw in (data, _http(data), b"HTTP/1.1 200 OK\r\n" + data):
        try:
            upnp.parse_external_ip(upnp.parse_http_response(raw))
        except ParseError:
            pass
