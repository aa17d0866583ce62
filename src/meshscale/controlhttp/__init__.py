"""meshscale.controlhttp: ts2021 over HTTP, both sides (tailscale control/controlhttp).

The one home of the ``/key`` fetch, the ``/ts2021`` upgrade, the Noise handshake
(meshscale.controlbase), the early payload and HTTP/2 inside Noise: ``dial`` and ``H2Client``
for the node, ``NoiseUpgrade``, ``key_response`` and ``H2Server`` for the control server.
"""

from .client import ClientError, H2Client, Reply, dial, fetch_key
from .h2server import MAX_NOISE_BODY, H2Server, NoiseHandler, NoiseRequest, StreamAborted
from .limits import Budget, NoiseGate, NoiseLimits
from .noisestream import NoiseStream
from .server import HANDSHAKE_HEADER, UPGRADE_PROTOCOL, NoiseUpgrade, key_response

__all__ = [
    "HANDSHAKE_HEADER",
    "MAX_NOISE_BODY",
    "UPGRADE_PROTOCOL",
    "Budget",
    "ClientError",
    "H2Client",
    "H2Server",
    "NoiseGate",
    "NoiseHandler",
    "NoiseLimits",
    "NoiseRequest",
    "NoiseStream",
    "NoiseUpgrade",
    "Reply",
    "StreamAborted",
    "dial",
    "fetch_key",
    "key_response",
]
