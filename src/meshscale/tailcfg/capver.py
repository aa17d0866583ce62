"""Capability versions (tailscale tailcfg.CapabilityVersion).

History of the numbers that matter to the server (docs/protocol/control.md §1.2):
  39  NoiseCapabilityVersion: /key answers with the Noise public key
  68  Stream:true map requests are read-only for Hostinfo/Endpoints
  81  client understands MapResponse.PacketFilters
 111  client understands Node.HomeDERP instead of the legacy "DERP" string
 112  Node.AllowedIPs may be null meaning "same as Addresses"
 113  v1.80, the oldest client we accept (Headscale's floor as well)
 130  v1.90; 131 v1.92/v1.94; 133 v1.96; 138 v1.98; 145 upstream main at the time of writing
"""

from __future__ import annotations

from typing import NewType

CapabilityVersion = NewType("CapabilityVersion", int)

NOISE_CAPABILITY_VERSION = 39
CAPVER_PACKET_FILTERS = 81
CAPVER_HOME_DERP = 111
CAPVER_NULL_ALLOWED_IPS = 112
MIN_SUPPORTED_CAPABILITY_VERSION = 113  # v1.80
CURRENT_CAPABILITY_VERSION = 133  # v1.96, the newest client we test against

CLIENT_VERSIONS: dict[str, int] = {
    "v1.80": 113,
    "v1.82": 115,
    "v1.84": 116,
    "v1.86": 123,
    "v1.88": 125,
    "v1.90": 130,
    "v1.92": 131,
    "v1.94": 131,
    "v1.96": 133,
}
