"""Disco: the NAT-traversal discovery messages and their NaCl-box envelope.

Wire format of one disco packet (docs/protocol/derp-disco-stun.md §4.2)::

    magic "TS\\U0001f4ac" (6)  54 53 f0 9f 92 ac
    sender disco public key (32)
    nonce (24)
    NaCl box (crypto_box: X25519 + XSalsa20-Poly1305): 16-byte tag + plaintext

Plaintext inside the box (section 4.3)::

    type (1) | version (1, always 0) | payload ...

    0x01 Ping         TxID(12) | sender node key(32, omitted by old clients) | zero padding
    0x02 Pong         TxID(12) | source IP(16, IPv4 mapped) | port(2)
    0x03 CallMeMaybe  N x (IP(16) | port(2))
    0x04-0x06 BindUDPRelayEndpoint{,Challenge,Answer}
                      VNI(4) | Generation(4) | RemoteKey(32) | Challenge(32)
    0x07 CallMeMaybeVia                UDPRelayEndpoint block
    0x08 AllocateUDPRelayEndpointRequest  ClientDisco[2](64) | Generation(4)
    0x09 AllocateUDPRelayEndpointResponse Generation(4) | UDPRelayEndpoint block

Receivers ignore trailing bytes. The relay messages (0x04-0x09, peer relays,
capability version >= 121) are parsed and marshalled so that a node can log and
ignore them; official clients simply do not offer us peer-relay paths.

Errors::

    DiscoError (ValueError)
     +-- ParseError      malformed packet or plaintext (remote)
     +-- OpenError       the box did not open: wrong key, forged or corrupted (remote)

No I/O: nonces come from the caller.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field
from typing import NamedTuple

import nacl.exceptions
import nacl.public

from meshscale.key import DiscoPrivate, DiscoPublic, NodePublic

MAGIC = "TS\U0001f4ac".encode()  # 6 bytes: 54 53 f0 9f 92 ac
KEY_LEN = 32  # bytes
NONCE_LEN = 24  # bytes
TAG_LEN = 16  # bytes (Poly1305)
HEADER_LEN = len(MAGIC) + KEY_LEN  # 38 bytes before the nonce
MIN_PACKET_LEN = HEADER_LEN + NONCE_LEN  # 62 bytes, DERP's "looks like disco" length
TXID_LEN = 12  # bytes, same as a STUN transaction ID
EP_LEN = 18  # bytes: IPv6 (or IPv4-mapped) address + port
PONG_LEN = TXID_LEN + EP_LEN  # 30 bytes of payload
BIND_LEN = 72  # bytes of payload of each Bind* message
RELAY_ENDPOINT_FIXED_LEN = 3 * KEY_LEN + 8 + 4 + 8 + 8  # 124 bytes before the AddrPorts
ALLOCATE_REQUEST_LEN = 2 * KEY_LEN + 4  # 68 bytes

# Peer-MTU probing pads pings up to at most a jumbo frame; anything above is an
# attempt to make us allocate (stops memory blow-up from a hostile Padding).
MAX_PING_PADDING = 9000  # bytes

TYPE_PING = 0x01
TYPE_PONG = 0x02
TYPE_CALL_ME_MAYBE = 0x03
TYPE_BIND_UDP_RELAY_ENDPOINT = 0x04
TYPE_BIND_UDP_RELAY_ENDPOINT_CHALLENGE = 0x05
TYPE_BIND_UDP_RELAY_ENDPOINT_ANSWER = 0x06
TYPE_CALL_ME_MAYBE_VIA = 0x07
TYPE_ALLOCATE_UDP_RELAY_ENDPOINT_REQUEST = 0x08
TYPE_ALLOCATE_UDP_RELAY_ENDPOINT_RESPONSE = 0x09

_V0 = 0

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class AddrPort(NamedTuple):
    """An IP address and UDP port (Go's netip.AddrPort). IPv4 is always unmapped."""

    ip: IPAddress
    port: int

    @classmethod
    def parse(cls, text: str) -> AddrPort:
        """Parse ``1.2.3.4:5`` or ``[::1]:5``."""
        host, sep, port = text.rpartition(":")
        if not sep:
            raise ValueError(f"no port in {text!r}")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        return cls(unmap(ipaddress.ip_address(host)), int(port))

    def __str__(self) -> str:
        if self.ip.version == 6:
            return f"[{self.ip}]:{self.port}"
        return f"{self.ip}:{self.port}"


class DiscoError(ValueError):
    """Base of every disco error."""


class ParseError(DiscoError):
    """A disco packet or its plaintext is malformed."""


class OpenError(DiscoError):
    """A disco box failed to open (wrong key, forged or corrupted)."""


def unmap(ip: IPAddress) -> IPAddress:
    """Turn ``::ffff:a.b.c.d`` into ``a.b.c.d``; other addresses are returned unchanged."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _pack_ep(ep: AddrPort) -> bytes:
    ip = ep.ip
    raw = (
        ipaddress.IPv6Address(b"\x00" * 10 + b"\xff\xff" + ip.packed).packed
        if ip.version == 4
        else ip.packed
    )
    return raw + ep.port.to_bytes(2, "big")


def _unpack_ep(b: bytes) -> AddrPort:
    return AddrPort(unmap(ipaddress.IPv6Address(b[:16])), int.from_bytes(b[16:18], "big"))


def _unpack_eps(b: bytes) -> tuple[AddrPort, ...]:
    return tuple(_unpack_ep(b[i : i + EP_LEN]) for i in range(0, len(b), EP_LEN))


@dataclass(frozen=True, slots=True)
class Ping:
    """A path probe; the receiver answers with a Pong carrying the same TxID.

    ``node_key`` is the sender's WireGuard key (None from clients <= 1.16);
    ``padding`` zero bytes follow it for path-MTU probes.
    """

    tx_id: bytes
    node_key: NodePublic | None = None
    padding: int = 0

    def __post_init__(self) -> None:
        if len(self.tx_id) != TXID_LEN:
            raise ValueError("Ping.tx_id must be 12 bytes")
        if not 0 <= self.padding <= MAX_PING_PADDING:
            raise ValueError("Ping.padding out of range")

    def marshal(self) -> bytes:
        key = b"" if self.node_key is None or self.node_key.is_zero() else self.node_key.raw
        return bytes((TYPE_PING, _V0)) + self.tx_id + key + bytes(self.padding)


@dataclass(frozen=True, slots=True)
class Pong:
    """Answer to a Ping: the address the Ping came from (like a STUN answer)."""

    tx_id: bytes
    src: AddrPort

    def __post_init__(self) -> None:
        if len(self.tx_id) != TXID_LEN:
            raise ValueError("Pong.tx_id must be 12 bytes")

    def marshal(self) -> bytes:
        return bytes((TYPE_PONG, _V0)) + self.tx_id + _pack_ep(self.src)


@dataclass(frozen=True, slots=True)
class CallMeMaybe:
    """Sent only over DERP: "I have just sent UDP to you; ping these endpoints of mine"."""

    my_number: tuple[AddrPort, ...] = ()

    def marshal(self) -> bytes:
        return bytes((TYPE_CALL_ME_MAYBE, _V0)) + b"".join(map(_pack_ep, self.my_number))


@dataclass(frozen=True, slots=True)
class _BindCommon:
    vni: int
    generation: int
    remote_key: DiscoPublic
    challenge: bytes = bytes(32)

    TYPE = 0

    def __post_init__(self) -> None:
        if len(self.challenge) != 32:
            raise ValueError("challenge must be 32 bytes")

    def marshal(self) -> bytes:
        return (
            bytes((self.TYPE, _V0))
            + struct.pack(">II", self.vni, self.generation)
            + self.remote_key.raw
            + self.challenge
        )


@dataclass(frozen=True, slots=True)
class BindUDPRelayEndpoint(_BindCommon):
    """Peer-relay handshake, client to relay server (first message)."""

    TYPE = TYPE_BIND_UDP_RELAY_ENDPOINT


@dataclass(frozen=True, slots=True)
class BindUDPRelayEndpointChallenge(_BindCommon):
    """Peer-relay handshake, relay server to client."""

    TYPE = TYPE_BIND_UDP_RELAY_ENDPOINT_CHALLENGE


@dataclass(frozen=True, slots=True)
class BindUDPRelayEndpointAnswer(_BindCommon):
    """Peer-relay handshake, client echoes the challenge."""

    TYPE = TYPE_BIND_UDP_RELAY_ENDPOINT_ANSWER


@dataclass(frozen=True, slots=True)
class UDPRelayEndpoint:
    """A peer-relay server endpoint, carried by CallMeMaybeVia and the allocation answer.

    Lifetimes are in nanoseconds as on the wire (Go time.Duration).
    """

    server_disco: DiscoPublic
    client_disco: tuple[DiscoPublic, DiscoPublic]
    lamport_id: int
    vni: int
    bind_lifetime_ns: int
    steady_state_lifetime_ns: int
    addr_ports: tuple[AddrPort, ...] = field(default=())

    def encode(self) -> bytes:
        return (
            self.server_disco.raw
            + self.client_disco[0].raw
            + self.client_disco[1].raw
            + struct.pack(
                ">QIQQ",
                self.lamport_id,
                self.vni,
                self.bind_lifetime_ns,
                self.steady_state_lifetime_ns,
            )
            + b"".join(map(_pack_ep, self.addr_ports))
        )

    @classmethod
    def decode(cls, b: bytes) -> UDPRelayEndpoint:
        rest = len(b) - RELAY_ENDPOINT_FIXED_LEN
        if rest < EP_LEN or rest % EP_LEN:
            raise ParseError("UDPRelayEndpoint: bad length")
        k = KEY_LEN
        lamport, vni, bind, steady = struct.unpack_from(">QIQQ", b, 3 * k)
        return cls(
            DiscoPublic(b[:k]),
            (DiscoPublic(b[k : 2 * k]), DiscoPublic(b[2 * k : 3 * k])),
            lamport,
            vni,
            bind,
            steady,
            _unpack_eps(b[RELAY_ENDPOINT_FIXED_LEN:]),
        )


@dataclass(frozen=True, slots=True)
class CallMeMaybeVia:
    """Sent only over DERP: reach me through this peer-relay endpoint."""

    endpoint: UDPRelayEndpoint

    def marshal(self) -> bytes:
        return bytes((TYPE_CALL_ME_MAYBE_VIA, _V0)) + self.endpoint.encode()


@dataclass(frozen=True, slots=True)
class AllocateUDPRelayEndpointRequest:
    """Sent only over DERP to a peer-relay server."""

    client_disco: tuple[DiscoPublic, DiscoPublic]
    generation: int

    def marshal(self) -> bytes:
        return (
            bytes((TYPE_ALLOCATE_UDP_RELAY_ENDPOINT_REQUEST, _V0))
            + self.client_disco[0].raw
            + self.client_disco[1].raw
            + self.generation.to_bytes(4, "big")
        )


@dataclass(frozen=True, slots=True)
class AllocateUDPRelayEndpointResponse:
    """A peer-relay server's answer to an allocation request."""

    generation: int
    endpoint: UDPRelayEndpoint

    def marshal(self) -> bytes:
        return (
            bytes((TYPE_ALLOCATE_UDP_RELAY_ENDPOINT_RESPONSE, _V0))
            + self.generation.to_bytes(4, "big")
            + self.endpoint.encode()
        )


Message = (
    Ping
    | Pong
    | CallMeMaybe
    | BindUDPRelayEndpoint
    | BindUDPRelayEndpointChallenge
    | BindUDPRelayEndpointAnswer
    | CallMeMaybeVia
    | AllocateUDPRelayEndpointRequest
    | AllocateUDPRelayEndpointResponse
)


def parse(plaintext: bytes) -> Message:
    """Parse the plaintext from inside the box. Raises ParseError only.

    Leniency follows upstream on purpose: trailing bytes are ignored, and a
    CallMeMaybe with a bad length or version carries no endpoints (it still
    triggers pings).
    """
    if len(plaintext) < 2:
        raise ParseError("short message")
    t, ver, p = plaintext[0], plaintext[1], bytes(plaintext[2:])
    if t == TYPE_PING:
        if len(p) < TXID_LEN:
            raise ParseError("short ping")
        rest = p[TXID_LEN:]
        if len(rest) >= KEY_LEN and any(rest[:KEY_LEN]):
            node_key: NodePublic | None = NodePublic(rest[:KEY_LEN])
            padding = len(rest) - KEY_LEN
        else:
            node_key, padding = None, len(rest)
        if padding > MAX_PING_PADDING:
            raise ParseError("ping padding too large")
        return Ping(p[:TXID_LEN], node_key, padding)
    if t == TYPE_PONG:
        if len(p) < PONG_LEN:
            raise ParseError("short pong")
        return Pong(p[:TXID_LEN], _unpack_ep(p[TXID_LEN:PONG_LEN]))
    if t == TYPE_CALL_ME_MAYBE:
        if ver != _V0 or len(p) % EP_LEN:
            return CallMeMaybe(())
        return CallMeMaybe(_unpack_eps(p))
    if t in _BIND_TYPES:
        if len(p) < BIND_LEN:
            raise ParseError("short bind message")
        vni, gen = struct.unpack_from(">II", p)
        return _BIND_TYPES[t](vni, gen, DiscoPublic(p[8:40]), p[40:72])
    if ver != _V0:
        # Upstream returns an empty message for unknown versions of these; we
        # have no empty form for them, so they are rejected instead.
        raise ParseError(f"unsupported version {ver} of type 0x{t:02x}")
    if t == TYPE_CALL_ME_MAYBE_VIA:
        return CallMeMaybeVia(UDPRelayEndpoint.decode(p))
    if t == TYPE_ALLOCATE_UDP_RELAY_ENDPOINT_REQUEST:
        if len(p) < ALLOCATE_REQUEST_LEN:
            raise ParseError("short allocation request")
        return AllocateUDPRelayEndpointRequest(
            (DiscoPublic(p[:KEY_LEN]), DiscoPublic(p[KEY_LEN : 2 * KEY_LEN])),
            int.from_bytes(p[2 * KEY_LEN : ALLOCATE_REQUEST_LEN], "big"),
        )
    if t == TYPE_ALLOCATE_UDP_RELAY_ENDPOINT_RESPONSE:
        if len(p) < 4:
            raise ParseError("short allocation response")
        return AllocateUDPRelayEndpointResponse(
            int.from_bytes(p[:4], "big"), UDPRelayEndpoint.decode(p[4:])
        )
    raise ParseError(f"unknown message type 0x{t:02x}")


_BIND_TYPES: dict[
    int,
    type[BindUDPRelayEndpoint]
    | type[BindUDPRelayEndpointChallenge]
    | type[BindUDPRelayEndpointAnswer],
] = {
    TYPE_BIND_UDP_RELAY_ENDPOINT: BindUDPRelayEndpoint,
    TYPE_BIND_UDP_RELAY_ENDPOINT_CHALLENGE: BindUDPRelayEndpointChallenge,
    TYPE_BIND_UDP_RELAY_ENDPOINT_ANSWER: BindUDPRelayEndpointAnswer,
}


def looks_like_disco(datagram: bytes | memoryview) -> bool:
    """True if the datagram has the disco magic and room for key and nonce (section 4.4)."""
    return len(datagram) >= MIN_PACKET_LEN and datagram[: len(MAGIC)] == MAGIC


def source(datagram: bytes | memoryview) -> DiscoPublic:
    """The sender's disco public key, read before any decryption. Raises ParseError."""
    if not looks_like_disco(datagram):
        raise ParseError("not a disco packet")
    return DiscoPublic(bytes(datagram[len(MAGIC) : HEADER_LEN]))


class DiscoBox:
    """The precomputed NaCl box between our disco key and one peer's (crypto_box_beforenm).

    Build one per peer and keep it: the X25519 is done once here. A low-order peer
    key raises OpenError.
    """

    __slots__ = ("_box", "own", "peer")

    def __init__(self, own: DiscoPrivate, peer: DiscoPublic) -> None:
        self.own = own.public()
        self.peer = peer
        try:
            self._box = nacl.public.Box(
                nacl.public.PrivateKey(own.raw), nacl.public.PublicKey(peer.raw)
            )
        except nacl.exceptions.CryptoError as exc:
            # libsodium refuses low-order points (an all-zero shared secret).
            raise OpenError("unusable peer disco key") from exc

    def seal(self, message: Message, nonce: bytes) -> bytes:
        """The full disco packet for ``message``; ``nonce`` is 24 fresh random bytes."""
        if len(nonce) != NONCE_LEN:
            raise ValueError("nonce must be 24 bytes")
        sealed = self._box.encrypt(message.marshal(), nonce)
        return MAGIC + self.own.raw + bytes(sealed)

    def open(self, datagram: bytes | memoryview) -> Message:
        """Open a packet sent by ``peer``. Raises ParseError or OpenError."""
        if source(datagram) != self.peer:
            raise OpenError("disco packet is from a different sender key")
        if len(datagram) < MIN_PACKET_LEN + TAG_LEN:
            raise ParseError("disco packet too short for a box")
        body = bytes(datagram[HEADER_LEN:])
        try:
            plaintext = self._box.decrypt(body[NONCE_LEN:], body[:NONCE_LEN])
        except nacl.exceptions.CryptoError as exc:
            raise OpenError("disco box did not open") from exc
        return parse(plaintext)


def seal(own: DiscoPrivate, peer: DiscoPublic, message: Message, nonce: bytes) -> bytes:
    """One-shot seal; prefer a cached DiscoBox on hot paths."""
    return DiscoBox(own, peer).seal(message, nonce)


def open_packet(own: DiscoPrivate, datagram: bytes | memoryview) -> tuple[DiscoPublic, Message]:
    """One-shot open of a packet from whoever its header names. Raises ParseError or OpenError."""
    sender = source(datagram)
    return sender, DiscoBox(own, sender).open(datagram)
