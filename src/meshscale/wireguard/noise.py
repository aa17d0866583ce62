"""The Noise_IKpsk2 handshake as WireGuard runs it (docs/protocol/wireguard.md §3; wireguard-go
noise-protocol.go).

Pure functions over explicit state. The device supplies ephemeral keys, indices and the
wall clock, so every message can be reproduced from vectors.

    initiator                                   responder
    create_initiation  ---- initiation (1) --->  consume_initiation -> create_response
    consume_response   <--- response (2) ------  (keys derived, "next" keypair, unconfirmed)
    (keys derived, "current" keypair)  ---- first transport message confirms --->
"""

from __future__ import annotations

from dataclasses import dataclass

from .crypto import (
    C0,
    DH,
    H0,
    HASH,
    KDF1,
    KDF2,
    KDF3,
    AuthenticationError,
    aead_open,
    aead_seal,
    public_key,
)
from .messages import Initiation, Response


@dataclass(slots=True)
class InitiatorState:
    """What the initiator keeps between sending an initiation and consuming the response."""

    chain_key: bytes
    hash: bytes
    ephemeral_private: bytes
    local_index: int


@dataclass(frozen=True, slots=True)
class ConsumedInitiation:
    """The responder's view of a valid initiation, before replay/flood checks commit it."""

    peer_static: bytes
    timestamp: bytes
    remote_index: int
    remote_ephemeral: bytes
    chain_key: bytes
    hash: bytes


@dataclass(frozen=True, slots=True)
class SessionKeys:
    send_key: bytes
    receive_key: bytes
    local_index: int
    remote_index: int
    is_initiator: bool


def _mix_hash(h: bytes, data: bytes) -> bytes:
    return HASH(h + data)


def create_initiation(
    static_private: bytes,
    static_public: bytes,
    peer_static: bytes,
    static_static: bytes,
    ephemeral_private: bytes,
    sender_index: int,
    timestamp: bytes,
) -> tuple[Initiation, InitiatorState]:
    """Build an initiation (mac fields zero: the cookie layer fills them).

    static_static is DH(static_private, peer_static), precomputed per peer.
    """
    del static_private  # the static-static DH is precomputed
    h = _mix_hash(H0, peer_static)
    ephemeral_public = public_key(ephemeral_private)
    c = KDF1(C0, ephemeral_public)
    h = _mix_hash(h, ephemeral_public)
    c, k = KDF2(c, DH(ephemeral_private, peer_static))
    enc_static = aead_seal(k, 0, static_public, h)
    h = _mix_hash(h, enc_static)
    c, k = KDF2(c, static_static)
    enc_ts = aead_seal(k, 0, timestamp, h)
    h = _mix_hash(h, enc_ts)
    msg = Initiation(sender_index, ephemeral_public, enc_static, enc_ts, bytes(16), bytes(16))
    return msg, InitiatorState(c, h, ephemeral_private, sender_index)


def consume_initiation_static(
    static_private: bytes, static_public: bytes, msg: Initiation
) -> tuple[bytes, bytes, bytes]:
    """First half: decrypt the initiator's static key. Returns (peer_static, chain, hash).

    Raises AuthenticationError if the message does not decrypt.
    """
    h = _mix_hash(H0, static_public)
    c = KDF1(C0, msg.ephemeral)
    h = _mix_hash(h, msg.ephemeral)
    c, k = KDF2(c, DH(static_private, msg.ephemeral))
    peer_static = aead_open(k, 0, msg.encrypted_static, h)
    h = _mix_hash(h, msg.encrypted_static)
    return peer_static, c, h


def consume_initiation_timestamp(
    msg: Initiation, peer_static: bytes, static_static: bytes, chain: bytes, h: bytes
) -> ConsumedInitiation:
    """Second half, once the peer is known: decrypt the timestamp."""
    c, k = KDF2(chain, static_static)
    timestamp = aead_open(k, 0, msg.encrypted_timestamp, h)
    h = _mix_hash(h, msg.encrypted_timestamp)
    return ConsumedInitiation(peer_static, timestamp, msg.sender, msg.ephemeral, c, h)


def create_response(
    consumed: ConsumedInitiation,
    preshared_key: bytes,
    ephemeral_private: bytes,
    sender_index: int,
) -> tuple[Response, SessionKeys]:
    """Build the response and derive the responder's (unconfirmed) session keys."""
    ephemeral_public = public_key(ephemeral_private)
    h = _mix_hash(consumed.hash, ephemeral_public)
    c = KDF1(consumed.chain_key, ephemeral_public)
    c = KDF1(c, DH(ephemeral_private, consumed.remote_ephemeral))
    c = KDF1(c, DH(ephemeral_private, consumed.peer_static))
    c, tau, k = KDF3(c, preshared_key)
    h = _mix_hash(h, tau)
    empty = aead_seal(k, 0, b"", h)
    h = _mix_hash(h, empty)
    msg = Response(
        sender_index, consumed.remote_index, ephemeral_public, empty, bytes(16), bytes(16)
    )
    recv_key, send_key = KDF2(c, b"")
    return msg, SessionKeys(send_key, recv_key, sender_index, consumed.remote_index, False)


def consume_response(
    state: InitiatorState, static_private: bytes, preshared_key: bytes, msg: Response
) -> SessionKeys:
    """Check the response against our pending initiation; derive the initiator's keys."""
    if msg.receiver != state.local_index:
        raise AuthenticationError("response names another handshake")
    h = _mix_hash(state.hash, msg.ephemeral)
    c = KDF1(state.chain_key, msg.ephemeral)
    c = KDF1(c, DH(state.ephemeral_private, msg.ephemeral))
    c = KDF1(c, DH(static_private, msg.ephemeral))
    c, tau, k = KDF3(c, preshared_key)
    h = _mix_hash(h, tau)
    aead_open(k, 0, msg.encrypted_nothing, h)
    send_key, recv_key = KDF2(c, b"")
    return SessionKeys(send_key, recv_key, state.local_index, msg.sender, True)
