"""The client half of the UAPI: encode requests as `wg` does, parse a daemon's answers.

Used by tests and tools (``meshscale.wgdev.uapi_server.query_device``) to talk to any
implementation, wireguard-go included. Performs no I/O; types and codecs live in ``uapi``.
"""

from __future__ import annotations

from typing import Final

from .peer import Endpoint
from .uapi import (
    _ZERO_KEY,
    IPC_ERROR_PROTOCOL,
    MAX_ANSWER_SIZE,
    UNSET,
    DeviceSnapshot,
    GetRequest,
    IPNetwork,
    PeerSnapshot,
    Request,
    UAPIError,
    _ascii,
    _key_hex,
    _parse_key,
    _parse_prefix,
    _parse_uint,
    _prefix_text,
    format_endpoint,
    parse_endpoint,
)

__all__ = ["format_request", "parse_get_response", "parse_set_response"]


def format_request(request: Request) -> bytes:
    """Encode a request as a client (``wg``) would send it, field order as in ipc-uapi.h."""
    if isinstance(request, GetRequest):
        return b"get=1\n\n"
    out = ["set=1"]
    if request.private_key is not UNSET:
        out.append(f"private_key={_key_hex(request.private_key or _ZERO_KEY)}")
    if request.listen_port is not None:
        out.append(f"listen_port={request.listen_port}")
    if request.fwmark is not None:
        out.append(f"fwmark={request.fwmark}")
    if request.replace_peers:
        out.append("replace_peers=true")
    for peer in request.peers:
        out.append(f"public_key={_key_hex(peer.public_key)}")
        if peer.remove:
            out.append("remove=true")
            continue
        if peer.update_only:
            out.append("update_only=true")
        if peer.protocol_version is not None:
            out.append(f"protocol_version={peer.protocol_version}")
        if peer.preshared_key is not None:
            out.append(f"preshared_key={_key_hex(peer.preshared_key)}")
        if peer.endpoint is not None:
            out.append(f"endpoint={format_endpoint(peer.endpoint)}")
        if peer.persistent_keepalive_interval is not None:
            out.append(f"persistent_keepalive_interval={peer.persistent_keepalive_interval}")
        if peer.replace_allowed_ips:
            out.append("replace_allowed_ips=true")
        out.extend(f"allowed_ip=-{_prefix_text(net)}" for net in peer.allowed_ips_remove)
        out.extend(f"allowed_ip={_prefix_text(net)}" for net in peer.allowed_ips_add)
    out.append("\n")
    return "\n".join(out).encode("ascii")


# ---- parsing answers (client) --------------------------------------------------------------------


def _answer_lines(data: bytes) -> list[tuple[bytes, bytes]]:
    if not data.endswith(b"\n\n") or data.count(b"\n\n") != 1 or len(data) > MAX_ANSWER_SIZE:
        raise UAPIError(IPC_ERROR_PROTOCOL, "answer must end with exactly one empty line")
    pairs = []
    for line in data[:-2].split(b"\n"):
        key, sep, value = line.partition(b"=")
        if not sep:
            raise UAPIError(IPC_ERROR_PROTOCOL, "answer line without '='")
        pairs.append((key, value))
    if not pairs or pairs[-1][0] != b"errno":
        raise UAPIError(IPC_ERROR_PROTOCOL, "answer does not end with errno")
    value = pairs[-1][1]
    negative = value.startswith(b"-")
    try:
        number = _parse_uint(value[1:] if negative else value, 0x7FFFFFFF, "errno")
    except UAPIError:
        raise UAPIError(IPC_ERROR_PROTOCOL, "bad errno in answer") from None
    if number:
        raise UAPIError(-number, "the daemon reported an error")
    return pairs[:-1]


def parse_set_response(data: bytes) -> None:
    """Check a complete answer to ``set``; raise UAPIError(errno) if the daemon reported one."""
    if _answer_lines(data):
        raise UAPIError(IPC_ERROR_PROTOCOL, "unexpected lines in set answer")


def parse_get_response(data: bytes) -> DeviceSnapshot:
    """Decode a complete answer to ``get`` (ending ``errno=0\\n\\n``). Unknown keys are ignored."""
    lines = _answer_lines(data)  # raises the daemon's own errno first
    device = _DeviceAnswer()
    try:
        for key, value in lines:
            device.line(key, value)
    except UAPIError as e:
        raise UAPIError(IPC_ERROR_PROTOCOL, f"bad get answer: {e}") from None
    return device.build()


_U64: Final = 0xFFFFFFFFFFFFFFFF


class _PeerAnswer:
    def __init__(self, public_key: bytes) -> None:
        self.public_key = public_key
        self.preshared_key: bytes | None = None
        self.endpoint: Endpoint | None = None
        self.sec = 0
        self.nsec = 0
        self.tx_bytes = 0
        self.rx_bytes = 0
        self.keepalive = 0
        self.allowed_ips: list[IPNetwork] = []

    def line(self, key: bytes, value: bytes) -> None:
        if key == b"preshared_key":
            psk = _parse_key(value, "preshared_key")
            self.preshared_key = None if psk == _ZERO_KEY else psk
        elif key == b"endpoint":
            self.endpoint = parse_endpoint(_ascii(value, "endpoint"))
        elif key == b"last_handshake_time_sec":
            self.sec = _parse_uint(value, _U64 >> 1, "last_handshake_time_sec")
        elif key == b"last_handshake_time_nsec":
            self.nsec = _parse_uint(value, 999_999_999, "last_handshake_time_nsec")
        elif key == b"tx_bytes":
            self.tx_bytes = _parse_uint(value, _U64, "tx_bytes")
        elif key == b"rx_bytes":
            self.rx_bytes = _parse_uint(value, _U64, "rx_bytes")
        elif key == b"persistent_keepalive_interval":
            self.keepalive = _parse_uint(value, 0xFFFF, "persistent_keepalive_interval")
        elif key == b"allowed_ip":
            self.allowed_ips.append(_parse_prefix(_ascii(value, "allowed_ip")))

    def build(self) -> PeerSnapshot:
        return PeerSnapshot(
            public_key=self.public_key,
            preshared_key=self.preshared_key,
            endpoint=self.endpoint,
            last_handshake_time_ns=self.sec * 1_000_000_000 + self.nsec,
            tx_bytes=self.tx_bytes,
            rx_bytes=self.rx_bytes,
            persistent_keepalive_interval=self.keepalive,
            allowed_ips=self.allowed_ips,
        )


class _DeviceAnswer:
    def __init__(self) -> None:
        self.private_key: bytes | None = None
        self.listen_port = 0
        self.fwmark = 0
        self.peers: list[_PeerAnswer] = []

    def line(self, key: bytes, value: bytes) -> None:
        # As in ipc-uapi.h: device keys only count before the first public_key.
        if key == b"public_key":
            self.peers.append(_PeerAnswer(_parse_key(value, "public_key")))
        elif self.peers:
            self.peers[-1].line(key, value)
        elif key == b"private_key":
            self.private_key = _parse_key(value, "private_key")
        elif key == b"listen_port":
            self.listen_port = _parse_uint(value, 0xFFFF, "listen_port")
        elif key == b"fwmark":
            self.fwmark = _parse_uint(value, 0xFFFFFFFF, "fwmark")

    def build(self) -> DeviceSnapshot:
        return DeviceSnapshot(
            private_key=self.private_key,
            listen_port=self.listen_port,
            fwmark=self.fwmark,
            peers=[peer.build() for peer in self.peers],
        )
