"""Network maps: building them (mapper), fanning changes out (batcher), streaming them
(poll, ``POST /machine/map``)."""

from meshscale.control.mapper.batcher import Batcher, MapSession, MapSource, SnapshotSource
from meshscale.control.mapper.mapper import MapConfig, NodeJSONCache, build_dns_config
from meshscale.control.mapper.poll import MapHandler, frame

__all__ = [
    "Batcher",
    "MapConfig",
    "MapHandler",
    "MapSession",
    "MapSource",
    "NodeJSONCache",
    "SnapshotSource",
    "build_dns_config",
    "frame",
]
