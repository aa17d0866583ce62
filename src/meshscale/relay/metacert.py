"""derper's TLS "meta certificate": the DERP server key inside the certificate chain.

An extra self-signed Ed25519 certificate appended to the end of the chain
(docs/protocol/derp-disco-stun.md §1.2): CN ``derpkey<64 hex>``, serial = the DERP protocol version
(2), valid for 30 days either side of now. A client that negotiates TLS 1.3 (where the chain travels
encrypted) and finds it knows the server key before the HTTP upgrade, sends ``Derp-Fast-Start: 1``
and skips waiting for the 101 and the ServerKey frame. Clients that do not look for it ignore an
unused cert.
"""

from __future__ import annotations

import datetime
import os
import ssl
import tempfile
import warnings
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import NameOID

from ..derp.frames import PROTOCOL_VERSION
from ..key import NodePublic

VALIDITY = datetime.timedelta(days=30)


def meta_certificate(server_key: NodePublic, now: datetime.datetime) -> bytes:
    """The meta certificate as PEM."""
    key = ed25519.Ed25519PrivateKey.generate()
    # 71 characters: longer than RFC 5280's 64 for a CN, as derper's; Go does not check it.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Attribute's length", UserWarning)
        cn = x509.NameAttribute(NameOID.COMMON_NAME, "derpkey" + server_key.hex(), _validate=False)
    name = x509.Name([cn])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(PROTOCOL_VERSION)
        .not_valid_before(now - VALIDITY)
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, None)
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def load_chain_with_meta(
    ctx: ssl.SSLContext, certfile: str, keyfile: str, server_key: NodePublic
) -> None:
    """``ctx.load_cert_chain`` with the meta certificate appended to the chain."""
    chain = Path(certfile).read_bytes().rstrip(b"\n") + b"\n"
    meta = meta_certificate(server_key, datetime.datetime.now(datetime.UTC))
    # ssl only loads chains from files: write one only we can read, and remove it at once.
    fd, path = tempfile.mkstemp(prefix="derp-chain-", suffix=".pem")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(chain + meta)
        ctx.load_cert_chain(path, keyfile)
    finally:
        os.unlink(path)
