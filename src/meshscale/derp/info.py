"""The boxed login messages: ClientInfo (client -> server) and ServerInfo (server -> client).

ClientInfo payload: ``client key (32) || nonce (24) || box(JSON)``, sealed with the client's
node private key to the server's public key. ServerInfo payload: ``nonce (24) || box(JSON)``,
sealed the other way (docs/protocol/derp-disco-stun.md §1.5). The box is NaCl ``crypto_box``; the
nonce is passed in. JSON keys are matched case-insensitively and unknown keys ignored, as Go does.
Opening raises ``HandshakeError``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import nacl.exceptions
import nacl.public

from ..key import NodePrivate
from .errors import HandshakeError, LocalDERPError
from .frames import KEY_LEN, MAX_INFO_LEN, NONCE_LEN, PROTOCOL_VERSION


@dataclass(frozen=True, slots=True)
class ClientInfo:
    mesh_key: str = ""  # 64 hex characters, only from trusted mesh peers
    version: int = PROTOCOL_VERSION
    can_ack_pings: bool = True
    is_prober: bool = False
    app_name: str = ""

    def to_json(self) -> bytes:
        obj: dict[str, Any] = {}
        if self.mesh_key:
            obj["meshKey"] = self.mesh_key
        if self.version:
            obj["version"] = self.version
        obj["CanAckPings"] = self.can_ack_pings
        if self.is_prober:
            obj["IsProber"] = True
        if self.app_name:
            obj["AppName"] = self.app_name
        return json.dumps(obj, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> ClientInfo:
        obj = _lenient_json(raw)
        return cls(
            mesh_key=_typed(obj, "meshkey", str, ""),
            version=_typed(obj, "version", int, 0),
            can_ack_pings=_typed(obj, "canackpings", bool, False),
            is_prober=_typed(obj, "isprober", bool, False),
            app_name=_typed(obj, "appname", str, ""),
        )


@dataclass(frozen=True, slots=True)
class ServerInfo:
    version: int = PROTOCOL_VERSION
    token_bucket_bytes_per_second: int = 0
    token_bucket_bytes_burst: int = 0

    def to_json(self) -> bytes:
        obj: dict[str, Any] = {}
        if self.version:
            obj["version"] = self.version
        if self.token_bucket_bytes_per_second:
            obj["TokenBucketBytesPerSecond"] = self.token_bucket_bytes_per_second
        if self.token_bucket_bytes_burst:
            obj["TokenBucketBytesBurst"] = self.token_bucket_bytes_burst
        return json.dumps(obj, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> ServerInfo:
        obj = _lenient_json(raw)
        return cls(
            version=_typed(obj, "version", int, 0),
            token_bucket_bytes_per_second=_typed(obj, "tokenbucketbytespersecond", int, 0),
            token_bucket_bytes_burst=_typed(obj, "tokenbucketbytesburst", int, 0),
        )


def _lenient_json(raw: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise HandshakeError("info is not JSON") from exc
    if not isinstance(obj, dict):
        raise HandshakeError("info is not a JSON object")
    return {str(k).lower(): v for k, v in obj.items()}


def _typed(obj: dict[str, Any], key: str, typ: type[Any], default: Any) -> Any:
    v = obj.get(key, default)
    if v is None:
        return default
    # bool is an int subclass in Python but not in Go's decoder.
    if not isinstance(v, typ) or (typ is int and isinstance(v, bool)):
        raise HandshakeError(f"info field {key!r} has the wrong type")
    return v


def _box(private: NodePrivate, peer_public: bytes) -> nacl.public.Box:
    try:
        return nacl.public.Box(
            nacl.public.PrivateKey(private.raw), nacl.public.PublicKey(peer_public)
        )
    except (nacl.exceptions.CryptoError, TypeError, ValueError) as exc:
        raise HandshakeError("bad public key") from exc


def seal(private: NodePrivate, peer_public: bytes, plaintext: bytes, nonce: bytes) -> bytes:
    """``nonce || box``; the nonce (24 random bytes) comes from the caller."""
    if len(nonce) != NONCE_LEN:
        raise LocalDERPError("nonce must be 24 bytes")
    return bytes(_box(private, peer_public).encrypt(plaintext, nonce))


def open_sealed(private: NodePrivate, peer_public: bytes, sealed: bytes) -> bytes:
    if len(sealed) < NONCE_LEN + 16:
        raise HandshakeError("sealed info too short")
    try:
        return bytes(_box(private, peer_public).decrypt(sealed))
    except nacl.exceptions.CryptoError as exc:
        raise HandshakeError("info box does not open") from exc


def client_info_payload(
    client: NodePrivate, server_public: bytes, info: ClientInfo, nonce: bytes
) -> bytes:
    """The ClientInfo frame payload."""
    return client.public_raw() + seal(client, server_public, info.to_json(), nonce)


def open_client_info(server: NodePrivate, client_key: bytes, sealed: bytes) -> ClientInfo:
    if len(client_key) != KEY_LEN:
        raise HandshakeError("bad client key")
    return ClientInfo.from_json(open_sealed(server, client_key, sealed))


def server_info_payload(
    server: NodePrivate, client_public: bytes, info: ServerInfo, nonce: bytes
) -> bytes:
    return seal(server, client_public, info.to_json(), nonce)


def open_server_info(client: NodePrivate, server_key: bytes, sealed: bytes) -> ServerInfo:
    if len(sealed) > NONCE_LEN + MAX_INFO_LEN:
        raise HandshakeError("ServerInfo too long")
    return ServerInfo.from_json(open_sealed(client, server_key, sealed))
