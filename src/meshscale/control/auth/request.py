"""What a node sends over Noise: decoding it, and who it speaks for.

``/machine/register`` and ``/machine/map`` start the same way (docs/protocol/control.md §3 and 4)::

    body ─ decode_request(cls, req) ─> RegisterRequest | MapRequest   (400: bad JSON, or a
                                                                       capability version
                                                                       we do not serve)
    NodeKey ─ lookup_node(state, machine_key, node_key) ─> Node | None  (NodeBindingError:
                                                          the key is another machine's)

and store the client's Hostinfo and endpoints only after :func:`sanitize_hostinfo` and
:func:`valid_addrport`: peers decode both, and one bad value would break every netmap.
"""

from __future__ import annotations

import ipaddress
import json
from typing import Any, Final, TypeVar

from meshscale.control import models
from meshscale.control.state import StateReader
from meshscale.controlhttp import NoiseRequest
from meshscale.io.http import Response
from meshscale.key import MachinePublic, NodePublic
from meshscale.tailcfg import (
    MIN_SUPPORTED_CAPABILITY_VERSION,
    Hostinfo,
    MapRequest,
    ParseError,
    RegisterRequest,
    from_json,
    loads,
    to_json,
    unsupported_client,
)

MAX_ROUTES: Final = 1024  # RoutableIPs kept per Hostinfo: a client announcing endless routes

_Request = TypeVar("_Request", MapRequest, RegisterRequest)


class NodeBindingError(Exception):
    """The NodeKey belongs to a different machine key than the Noise peer."""


def decode_request(cls: type[_Request], req: NoiseRequest) -> _Request | Response:
    """The body as ``cls``, or the HTTP 400 that answers it (malformed, or a client older
    than MIN_SUPPORTED_CAPABILITY_VERSION)."""
    try:
        msg = loads(cls, req.body)
    except ParseError as exc:
        return Response.text(400, f"bad {cls.__name__}: {exc}\n")
    if msg.Version < MIN_SUPPORTED_CAPABILITY_VERSION:
        return Response.text(400, unsupported_client(msg.Version) + "\n")
    return msg


def lookup_node(
    state: StateReader, machine_key: MachinePublic, node_key: NodePublic
) -> models.Node | None:
    """The node ``node_key`` names, checked against the Noise peer (docs/protocol/control.md §3.7
    and 7.2)."""
    node = state.get_node_by_node_key(node_key)
    if node is not None and node.machine_key != machine_key:
        raise NodeBindingError("node key is bound to a different machine key")
    return node


def raw_field(body: bytes, name: str) -> Any:
    """One top-level field of a JSON object body, as raw JSON values (Go matches keys
    case-insensitively). Hostinfo is stored raw so peers see every field the client sent."""
    try:
        data = json.loads(body)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    lname = name.lower()
    for k, v in data.items():
        if k.lower() == lname:
            return v
    return None


def valid_addrport(text: str) -> bool:
    """Go's netip.ParseAddrPort accepts it: ``1.2.3.4:5`` or ``[v6]:5`` (no zone checks)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        return False
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1].split("%", 1)[0]
        version = 6
    else:
        version = 4
    try:
        return ipaddress.ip_address(host).version == version
    except ValueError:
        return False


def _valid_prefix(text: str) -> bool:
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError:
        return False
    return "/" in text


def sanitize_hostinfo(raw: Any) -> dict[str, Any] | None:
    """The client's Hostinfo as we store it and show it to peers.

    It goes through the typed tailcfg.Hostinfo, so every field a peer's decoder reads has
    the right type (a bad value would make every peer's netmap fail to decode), fields we do
    not model are dropped, and RoutableIPs keeps only valid prefixes.
    """
    if not isinstance(raw, dict):
        return None
    try:
        hi = from_json(Hostinfo, raw)
    except ParseError:
        return None
    hi.TPM = None
    if hi.NetInfo is not None:
        # Latencies change on every netcheck; peers do not use them, and storing them would
        # turn each netcheck into a fan-out to every peer.
        hi.NetInfo.DERPLatency = {}
    hi.Services = [sv for sv in hi.Services if 0 <= sv.Port <= 0xFFFF][:MAX_ROUTES]  # uint16
    hi.RoutableIPs = [p for p in hi.RoutableIPs if _valid_prefix(p)][:MAX_ROUTES]
    return to_json(hi)
