"""Capability versions (tailscale tailcfg.CapabilityVersion).

History of the numbers that matter to the server (docs/protocol/control.md §1.2):
  39  NoiseCapabilityVersion: /key answers with the Noise public key
  68  Stream:true map requests are read-only for Hostinfo/Endpoints
  81  client understands MapResponse.PacketFilters
 109  v1.78 (Dec 2024), the oldest client we accept: the oldest release of the last two
      years, and the oldest the lab runs (tests/lab/test_lab_old_client.py); older
      clients are refused with a message naming this minimum rather than served untested
 111  client understands Node.HomeDERP instead of the legacy "DERP" string (older clients
      get both, mapper.encode(legacy_derp=True))
 112  Node.AllowedIPs may be null meaning "same as Addresses" (we always send them)
 113  v1.80, Headscale's floor
 130  v1.90; 131 v1.92/v1.94; 133 v1.96; 138 v1.98; 145 upstream main at the time of writing
"""

from __future__ import annotations

from typing import NewType

CapabilityVersion = NewType("CapabilityVersion", int)

NOISE_CAPABILITY_VERSION = 39
CAPVER_PACKET_FILTERS = 81
CAPVER_HOME_DERP = 111
CAPVER_NULL_ALLOWED_IPS = 112
MIN_SUPPORTED_CAPABILITY_VERSION = 109  # v1.78
MIN_SUPPORTED_CLIENT = "v1.78"  # named in the refusal a too-old client shows
CURRENT_CAPABILITY_VERSION = 133  # v1.96, the newest client we test against

CLIENT_VERSIONS: dict[str, int] = {
    "v1.78": 109,
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


def unsupported_client(version: int) -> str:
    """The one-line refusal for a client older than the floor (it names the minimum)."""
    return (
        f"unsupported client capability version {version}: this server needs Tailscale "
        f"{MIN_SUPPORTED_CLIENT} or newer (capability version {MIN_SUPPORTED_CAPABILITY_VERSION})"
    )
