"""The DERP map the server hands out, from Headscale's three sources.

    derp.urls   fetched at start (and every derp.update_frequency): tailcfg.DERPMap JSON
    derp.paths  files: YAML or JSON, ``regions`` keyed by id, keys case-insensitive (Go)
    embedded    the region of the DERP server ``serve`` runs itself

A later source replaces a region of the same id (Headscale's order). An unreachable URL is
logged and skipped; a bad file is a ConfigError.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Final, TypeVar

from meshscale.control.config import ConfigError, DERPConfig
from meshscale.io import httpclient
from meshscale.tailcfg import DERPMap, DERPNode, DERPRegion, from_json

log = logging.getLogger(__name__)

T = TypeVar("T")

MAX_DERP_MAP_BYTES: Final = 4 << 20  # a remote DERP map larger than this is refused


async def fetch_derp_map(url: str, time_limit: float = 10.0) -> DERPMap:
    """GET a DERP map (tailcfg.DERPMap JSON, e.g. a derper's or control's /derpmap/default).
    Raises OSError/ValueError/TimeoutError."""
    try:
        resp = await httpclient.request(
            "GET", url, max_body=MAX_DERP_MAP_BYTES, time_limit=time_limit
        )
    except httpclient.ResponseTooLarge as exc:
        raise ValueError("DERP map too large") from exc
    except httpclient.HTTPClientError as exc:
        raise OSError(str(exc)) from exc
    if resp.status != 200:
        raise ValueError(f"http {resp.status}")
    raw = resp.body
    derp_map = from_json(DERPMap, json.loads(raw))
    derp_map.validate()
    return derp_map


def load_derp_map_file(path: Path) -> DERPMap:
    """A DERP map file (Headscale's derp.paths: YAML or JSON, ``regions`` keyed by id,
    field names matched case-insensitively as Go does)."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"config: derp.paths: cannot load {path}: {exc}") from exc
    regions = _ci(data, "regions") if isinstance(data, dict) else None
    if not isinstance(regions, dict):
        raise ConfigError(f"config: derp.paths: {path} has no regions mapping")
    out = DERPMap()
    for rid, raw in regions.items():
        if not isinstance(raw, dict):
            raise ConfigError(f"config: derp.paths: {path}: region {rid} is not a mapping")
        nodes = [_fill(DERPNode(), n) for n in (_ci(raw, "nodes") or []) if isinstance(n, dict)]
        region = _fill(DERPRegion(), {k: v for k, v in raw.items() if k.lower() != "nodes"})
        region.Nodes = nodes
        out.Regions[int(rid)] = region
    try:
        out.validate()
    except ValueError as exc:
        raise ConfigError(f"config: derp.paths: {path}: {exc}") from exc
    return out


def _ci(data: dict[str, Any], key: str) -> Any:
    return next((v for k, v in data.items() if str(k).lower() == key), None)


def _fill(obj: T, raw: dict[str, Any]) -> T:
    names = {f.lower(): f for f in obj.__dataclass_fields__}  # type: ignore[attr-defined]
    for key, value in raw.items():
        name = names.get(str(key).lower())
        if name is not None:
            setattr(obj, name, value)
    return obj


async def build_derp_map(derp: DERPConfig, embedded: DERPRegion | None = None) -> DERPMap:
    """The DERP map: regions from ``derp.urls``, then ``derp.paths``, then ``embedded``."""
    derp_map = DERPMap()
    for url in derp.urls:
        try:
            derp_map.Regions.update((await fetch_derp_map(url)).Regions)
        except (TimeoutError, OSError, ValueError) as exc:
            log.warning("derp.urls: cannot load %s: %s", url, exc)
    for path in derp.paths:
        derp_map.Regions.update(load_derp_map_file(path).Regions)
    if embedded is not None:
        derp_map.Regions[embedded.RegionID] = embedded
    return derp_map
