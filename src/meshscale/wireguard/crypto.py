"""Primitives of Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s as WireGuard uses them.

HASH is BLAKE2s-256, MAC is *keyed* BLAKE2s-128, HMAC is RFC 2104 over BLAKE2s, KDF_n is
HKDF-style expansion over that HMAC; AEAD is ChaCha20-Poly1305 with a 64-bit little-endian
counter nonce, XAEAD is XChaCha20-Poly1305 (cookie replies only).
"""

from __future__ import annotations

import hashlib
import hmac
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from nacl.bindings import (
    crypto_aead_xchacha20poly1305_ietf_decrypt,
    crypto_aead_xchacha20poly1305_ietf_encrypt,
)
from nacl.exceptions import CryptoError

CONSTRUCTION = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"
IDENTIFIER = b"WireGuard v1 zx2c4 Jason@zx2c4.com"
LABEL_MAC1 = b"mac1----"
LABEL_COOKIE = b"cookie--"

_NONCE = struct.Struct("<4xQ")
pack_nonce = _NONCE.pack


class AuthenticationError(ValueError):
    """An AEAD tag, a MAC or a DH result did not verify."""


def HASH(data: bytes) -> bytes:
    return hashlib.blake2s(data).digest()


def MAC(key: bytes, data: bytes) -> bytes:
    return hashlib.blake2s(data, digest_size=16, key=key).digest()


def HMAC(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.blake2s).digest()


def KDF1(key: bytes, data: bytes) -> bytes:
    t0 = HMAC(key, data)
    return HMAC(t0, b"\x01")


def KDF2(key: bytes, data: bytes) -> tuple[bytes, bytes]:
    t0 = HMAC(key, data)
    t1 = HMAC(t0, b"\x01")
    return t1, HMAC(t0, t1 + b"\x02")


def KDF3(key: bytes, data: bytes) -> tuple[bytes, bytes, bytes]:
    t0 = HMAC(key, data)
    t1 = HMAC(t0, b"\x01")
    t2 = HMAC(t0, t1 + b"\x02")
    return t1, t2, HMAC(t0, t2 + b"\x03")


def aead_seal(key: bytes, counter: int, plaintext: bytes, ad: bytes) -> bytes:
    return ChaCha20Poly1305(key).encrypt(_NONCE.pack(counter), plaintext, ad)


def aead_open(key: bytes, counter: int, ciphertext: bytes, ad: bytes) -> bytes:
    try:
        return ChaCha20Poly1305(key).decrypt(_NONCE.pack(counter), ciphertext, ad)
    except InvalidTag as exc:
        raise AuthenticationError("AEAD tag mismatch") from exc


def xaead_seal(key: bytes, nonce24: bytes, plaintext: bytes, ad: bytes) -> bytes:
    return bytes(crypto_aead_xchacha20poly1305_ietf_encrypt(plaintext, ad, nonce24, key))


def xaead_open(key: bytes, nonce24: bytes, ciphertext: bytes, ad: bytes) -> bytes:
    try:
        return bytes(crypto_aead_xchacha20poly1305_ietf_decrypt(ciphertext, ad, nonce24, key))
    except CryptoError as exc:
        raise AuthenticationError("XAEAD tag mismatch") from exc


def public_key(private: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()


def clamp(private: bytes) -> bytes:
    b = bytearray(private)
    b[0] &= 248
    b[31] = (b[31] & 127) | 64
    return bytes(b)


def DH(private: bytes, public: bytes) -> bytes:
    """X25519; an all-zero result (low-order point) is a failure (noise-helpers.go)."""
    try:
        out = X25519PrivateKey.from_private_bytes(private).exchange(
            X25519PublicKey.from_public_bytes(public)
        )
    except ValueError as exc:  # cryptography rejects all-zero outputs itself
        raise AuthenticationError("X25519 produced an all-zero result") from exc
    if not any(out):
        raise AuthenticationError("X25519 produced an all-zero result")
    return out


C0 = HASH(CONSTRUCTION)
H0 = HASH(C0 + IDENTIFIER)
