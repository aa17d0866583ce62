"""Where the cached reference clients live (filled by scripts/fetch-clients)."""

from __future__ import annotations

import os
from pathlib import Path

TAILSCALE_VERSION = "1.96.4"  # the official client pinned in scripts/fetch-clients
OLDEST_TAILSCALE_VERSION = "1.78.1"  # the oldest one it pins (capability version 109)


def clients_dir() -> Path:
    """The cache of reference client binaries: $MESHSCALE_CLIENTS_DIR, or <repo>/.cache/clients."""
    override = os.environ.get("MESHSCALE_CLIENTS_DIR")
    if override:
        return Path(override)
    # src/meshscale/lab/clients.py -> the repository root, for an editable install.
    repo = Path(__file__).resolve().parents[3]
    candidate = repo / ".cache" / "clients"
    if candidate.is_dir():
        return candidate
    return Path.cwd() / ".cache" / "clients"


def client_path(name: str, version: str | None = None) -> Path:
    """Path of one cached binary ("tailscale", "tailscaled", "caddy"); it may not exist.
    ``version`` names an older official release, cached in its own folder."""
    return clients_dir() / version / name if version else clients_dir() / name


def missing_clients(*names: str, version: str | None = None) -> list[str]:
    """Which of the named binaries are absent or not executable."""
    return [n for n in names if not os.access(client_path(n, version), os.X_OK)]


def skip_reason(*clients: str) -> str | None:
    """Why a lab test with official `clients` cannot run here, or None."""
    if os.geteuid() != 0:
        return "lab tests need root"
    if missing_clients(*clients):
        return "official clients not cached (scripts/fetch-clients)"
    return None
