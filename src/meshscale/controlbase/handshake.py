"""Noise_IK_25519_ChaChaPoly_BLAKE2s as ts2021 uses it (tailscale control/controlbase/handshake.go).

Flow (docs/protocol/control.md §2.5; ``S`` server static, ``s`` client machine key, ``e``/``e'``
ephemerals)::

    h = ck = BLAKE2s("Noise_IK_25519_ChaChaPoly_BLAKE2s")
    MixHash("Tailscale Control Protocol v<version>"); MixHash(S)
    -> e, es, s, ss      initiation: e.pub | seal(s.pub) | seal("")          (101 bytes with header)
    <- e, ee, se         response:   e'.pub | seal("")                       (51 bytes)
    split: k1, k2 = HKDF(ck, "")   client sends with k1, server sends with k2

Handshake ciphers use nonce 0 with the running hash as associated data. Randomness (the
ephemeral key) is passed in, never drawn here.
"""

from __future__ import annotations

import hashlib
import hmac

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from meshscale.key import MachinePrivate, MachinePublic

from .messages import (
    KEY_LEN,
    HandshakeError,
    Initiation,
    LocalProtocolError,
    Response,
    parse_initiation,
    parse_response,
)

PROTOCOL_NAME = b"Noise_IK_25519_ChaChaPoly_BLAKE2s"
PROLOGUE_PREFIX = b"Tailscale Control Protocol v"
_ZERO_NONCE = bytes(12)


def prologue(version: int) -> bytes:
    return PROLOGUE_PREFIX + str(version).encode()


def _hmac(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.blake2s).digest()


def hkdf2(ck: bytes, ikm: bytes) -> tuple[bytes, bytes]:
    """Noise HKDF with two outputs over HMAC-BLAKE2s."""
    prk = _hmac(ck, ikm)
    out1 = _hmac(prk, b"\x01")
    return out1, _hmac(prk, out1 + b"\x02")


class _SymmetricState:
    def __init__(self, version: int, server_static: bytes) -> None:
        self.h = hashlib.blake2s(PROTOCOL_NAME).digest()
        self.ck = self.h
        self.mix_hash(prologue(version))
        self.mix_hash(server_static)

    def mix_hash(self, data: bytes) -> None:
        self.h = hashlib.blake2s(self.h + data).digest()

    def mix_dh(self, priv: MachinePrivate, pub: bytes) -> bytes:
        try:
            shared = priv.shared(pub)
        except ValueError as exc:  # InvalidKeyError, or cryptography refusing an all-zero result
            raise HandshakeError("X25519 with a low-order point") from exc
        self.ck, k = hkdf2(self.ck, shared)
        return k

    def seal(self, key: bytes, plaintext: bytes) -> bytes:
        ct = ChaCha20Poly1305(key).encrypt(_ZERO_NONCE, plaintext, self.h)
        self.mix_hash(ct)
        return ct

    def open(self, key: bytes, ciphertext: bytes) -> bytes:
        try:
            pt = ChaCha20Poly1305(key).decrypt(_ZERO_NONCE, ciphertext, self.h)
        except InvalidTag as exc:
            raise HandshakeError("handshake message failed authentication") from exc
        self.mix_hash(ciphertext)
        return pt

    def split(self) -> tuple[bytes, bytes]:
        return hkdf2(self.ck, b"")


class ClientHandshake:
    """Initiator side. Build with the machine key, the server's control key, the protocol
    version and 32 random bytes for the ephemeral key; send ``initiation``; pass the
    server's 51-byte reply to ``receive_response``.
    """

    def __init__(
        self,
        machine_key: MachinePrivate,
        control_key: MachinePublic,
        version: int,
        ephemeral_random: bytes,
    ) -> None:
        if not 0 <= version <= 0xFFFF:
            raise LocalProtocolError("protocol version must fit in 16 bits")
        self.version = version
        self._s = machine_key
        self._server = control_key
        self._e = MachinePrivate(ephemeral_random)
        self._ss = _SymmetricState(version, control_key.raw)
        e_pub = self._e.public_raw()
        self._ss.mix_hash(e_pub)
        k = self._ss.mix_dh(self._e, control_key.raw)
        sealed = self._ss.seal(k, machine_key.public_raw())
        k = self._ss.mix_dh(machine_key, control_key.raw)
        tag = self._ss.seal(k, b"")
        self.initiation = Initiation(version, e_pub, sealed, tag).encode()
        self._done = False

    def receive_response(self, frame: bytes) -> tuple[bytes, bytes]:
        """Finish the handshake; returns (send_key, receive_key) for the client."""
        if self._done:
            raise LocalProtocolError("handshake already finished")
        resp = parse_response(frame)
        self._done = True
        self._ss.mix_hash(resp.ephemeral)
        self._ss.mix_dh(self._e, resp.ephemeral)
        k = self._ss.mix_dh(self._s, resp.ephemeral)
        self._ss.open(k, resp.tag)
        k1, k2 = self._ss.split()
        return k1, k2


def server_accept(
    initiation: bytes, server_key: MachinePrivate, ephemeral_random: bytes
) -> tuple[bytes, MachinePublic, int, tuple[bytes, bytes]]:
    """Responder side in one call.

    Returns (response frame, the client's machine key, its protocol version,
    (send_key, receive_key) for the server). Raises ParseError or HandshakeError.
    """
    init = parse_initiation(initiation)
    ss = _SymmetricState(init.version, server_key.public_raw())
    ss.mix_hash(init.ephemeral)
    k = ss.mix_dh(server_key, init.ephemeral)
    machine_raw = ss.open(k, init.machine_key_sealed)
    if len(machine_raw) != KEY_LEN:  # pragma: no cover - AEAD guarantees the length
        raise HandshakeError("machine key has the wrong length")
    k = ss.mix_dh(server_key, machine_raw)
    ss.open(k, init.tag)
    e = MachinePrivate(ephemeral_random)
    e_pub = e.public_raw()
    ss.mix_hash(e_pub)
    ss.mix_dh(e, init.ephemeral)
    k = ss.mix_dh(e, machine_raw)
    tag = ss.seal(k, b"")
    k1, k2 = ss.split()
    return Response(e_pub, tag).encode(), MachinePublic(machine_raw), init.version, (k2, k1)
