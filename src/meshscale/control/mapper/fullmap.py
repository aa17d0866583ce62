"""Full maps from shared compressed pieces (issue #14 goal 4: no O(N) compression per join).

A map-stream message is one zstd payload; a payload may hold several independent zstd frames
one after another, and a decoder yields their contents concatenated (RFC 8878 §3.1; the
official client's decoder takes "zero or more frames", ours reads across frames). So a full
map of N peers is sent as::

    zstd(head)  zstd(chunk 0)  zstd(chunk 1) ...  zstd(tail)
    head = '{"Node":...,"Peers":['     chunk k = the peers with k*C <= ID < (k+1)*C
    tail = ']}'                        (a leading ',' on every chunk but the first)

Chunks are compressed once and reused by every later full map whose chunk holds *the very
same* peer JSON objects (identity, not equality: the mapper's NodeJSONCache hands out one
dict per node snapshot and replaces it on any change, expiry included; a viewer-specific
peer, e.g. a router whose routes this viewer may not see, is a fresh dict, so it never matches
another viewer's chunk). A chunk that differs for one viewer (its own node left out, a peer it
may not see) is compressed for that viewer and kept as one more variant, at most VARIANTS per
chunk. The cache holds the dicts it compared against, so no identity is reused while cached.
"""

from __future__ import annotations

import operator
import struct
from bisect import bisect_left
from collections.abc import Callable, Sequence
from typing import Any

import zstandard

CHUNK = 128  # peers per chunk (by node ID range)
VARIANTS = 2  # compressed variants kept per chunk (the shared one, one viewer's own)
MIN_PEERS = 2 * CHUNK  # smaller maps are compressed whole (nothing to gain)
ZSTD_LEVEL = 3


def length_prefixed(body: bytes) -> bytes:
    """One map-stream message: u32 little-endian length, then the payload."""
    return struct.pack("<I", len(body)) + body


class PeerChunks:
    """The cache of compressed peer chunks; see the module docstring.

    ``compress`` (bytes -> one complete zstd frame) is injectable for tests."""

    def __init__(
        self,
        compress: Callable[[bytes], bytes] | None = None,
        *,
        chunk: int = CHUNK,
        variants: int = VARIANTS,
    ) -> None:
        if compress is None:
            compress = zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress
        self.compress = compress
        self.chunk = chunk
        self.variants = variants
        self._pieces: dict[tuple[int, bool], list[tuple[tuple[Any, ...], bytes]]] = {}
        self.hits = 0
        self.misses = 0

    def payload(
        self,
        head: bytes,
        peers: Sequence[dict[str, Any]],
        tail: bytes,
        encoded: Callable[[dict[str, Any]], bytes],
    ) -> bytes:
        """zstd frames whose contents, concatenated, are
        ``head + b",".join(encoded(p) for p in peers) + tail``. ``peers`` sorted by ID."""
        ids = [p["ID"] for p in peers]
        out = [self.compress(head)]
        i, n, c = 0, len(peers), self.chunk
        while i < n:
            k = ids[i] // c
            j = bisect_left(ids, (k + 1) * c, i)
            out.append(self._piece(k, i == 0, peers[i:j], encoded))
            i = j
        out.append(self.compress(tail))
        return b"".join(out)

    def _piece(
        self,
        k: int,
        first: bool,
        part: Sequence[dict[str, Any]],
        encoded: Callable[[dict[str, Any]], bytes],
    ) -> bytes:
        key = (k, first)
        found = self._pieces.get(key)
        if found is not None:
            for dicts, data in found:
                if len(dicts) == len(part) and all(map(operator.is_, dicts, part)):
                    self.hits += 1
                    return data
        self.misses += 1
        raw = b",".join(map(encoded, part))
        data = self.compress(raw if first else b"," + raw)
        variants = self._pieces.setdefault(key, [])
        variants.insert(0, (tuple(part), data))
        del variants[self.variants :]
        return data

    def clear(self) -> None:
        self._pieces.clear()

    def __len__(self) -> int:
        return sum(len(v) for v in self._pieces.values())
