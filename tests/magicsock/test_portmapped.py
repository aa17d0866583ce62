"""magicsock: a port-mapped address is advertised first, typed EndpointPortmapped."""

from __future__ import annotations

import ipaddress

from meshscale.disco import AddrPort
from meshscale.key import DiscoPrivate, NodePrivate
from meshscale.magicsock import Conn
from meshscale.magicsock.events import EndpointsChanged, EndpointType

MAPPED = AddrPort(ipaddress.IPv4Address("203.0.113.9"), 60000)


def test_portmapped_endpoint_is_advertised_first_and_withdrawn() -> None:
    conn = Conn(
        NodePrivate.generate(b"\x01" * 32).public(),
        DiscoPrivate.generate(b"\x02" * 32),
        rand=lambda n: bytes(n),
        local_port=41641,
    )
    conn.set_local_addresses([ipaddress.IPv4Address("192.168.1.10")], 0.0)
    conn.set_portmapped(MAPPED, 1.0)
    first = conn.endpoints[0]
    assert (first.addr, first.type) == (MAPPED, EndpointType.PORTMAPPED)
    events = []
    while (ev := conn.next_event()) is not None:
        events.append(ev)
    assert any(isinstance(e, EndpointsChanged) and e.endpoints[0].addr == MAPPED for e in events)
    conn.set_portmapped(None, 2.0)
    assert MAPPED not in [e.addr for e in conn.endpoints]
