"""DERP errors. One base, split by whose fault it is (as h11 splits Local/Remote)::

    DERPError
     ├── LocalDERPError         we misused the API (bad key length, oversized packet to send)
     ├── RemoteDERPError        the peer broke the protocol; the connection must be closed
     │    ├── FrameError        bad framing: oversized frame, wrong payload length (a ParseError)
     │    └── HandshakeError    bad ServerKey magic, box that does not open, bad info JSON
     └── AdmissionError         the relay refused a client (unknown node key, bad mesh key)

``FrameError`` and ``HandshakeError`` are ``ValueError`` subclasses, so every parser in this
package raises only ValueErrors on bad input.
"""

from __future__ import annotations


class DERPError(Exception):
    """Base of every DERP error."""


class LocalDERPError(DERPError, ValueError):
    """The caller misused the API."""


class RemoteDERPError(DERPError, ValueError):
    """The remote side violated the protocol."""


class FrameError(RemoteDERPError):
    """A frame is malformed or larger than its bound."""


ParseError = FrameError


class HandshakeError(RemoteDERPError):
    """The login exchange (ServerKey, ClientInfo, ServerInfo) failed."""


class AdmissionError(DERPError):
    """The relay refused the client; ``reason`` is a short machine-readable word."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
