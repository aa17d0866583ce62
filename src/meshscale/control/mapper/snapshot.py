"""Full maps from a shared snapshot of every node's peer JSON (issue #14 goal 4).

When a viewer may see every node and every node may see it (the allow-all policy of a
server with one tailnet and nothing shared: ``viewers_of`` says None), its full map's peers
are simply all nodes but itself. The batcher then takes them from this snapshot instead of
asking State for the peer list and walking it (O(N) Python per join, ~50 ms at 10,000
nodes, O(N^2) for a ramp):

    ids      the node IDs, sorted (kept up to date by the batcher's events: insort/remove)
    chunk k  the nodes with k*C <= ID < (k+1)*C: their JSON dicts (NodeJSONCache's), user
             IDs, and lazily the chunk's zstd frame (with and without a leading ',')

A node event drops its chunk (rebuilt on the next full map, O(C)); anything wider (users,
policy, DNS, resync) drops them all. A full map is then the head, the chunks' frames as
they are and the viewer's own chunk compressed without it: O(N/C) work plus a memcpy of
the compressed bytes (fullmap.py explains the concatenated frames on the wire).

A chunk holding a node whose JSON depends on the viewer (routes a viewer may not see) or on
the time (an expiry) is not shared: the full map then takes the ordinary path.
"""

from __future__ import annotations

import itertools
from bisect import bisect_left, insort
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from meshscale.control import models
from meshscale.control.mapper import mapper


@dataclass(slots=True)
class Chunk:
    ids: tuple[int, ...]
    dicts: tuple[dict[str, Any], ...]
    users: frozenset[int]
    shareable: bool  # no node's JSON depends on the viewer or on the time
    frames: dict[bool, bytes] = field(default_factory=dict)  # first? -> zstd frame


class SnapshotPeers(list[dict[str, Any]]):
    """A full map's Peers taken from the snapshot: a plain list of the peer dicts, which also
    knows its chunks, so encoding can reuse their compressed frames."""

    __slots__ = ("parts",)

    def __init__(self, parts: list[tuple[Chunk, tuple[dict[str, Any], ...] | None]]) -> None:
        # (chunk, None): the whole chunk; (chunk, dicts): the viewer's own chunk without it
        super().__init__(
            itertools.chain.from_iterable(c.dicts if d is None else d for c, d in parts)
        )
        self.parts = parts


class Snapshot:
    """See the module docstring. ``compress``: bytes -> one complete zstd frame."""

    def __init__(self, compress: Callable[[bytes], bytes], chunk: int) -> None:
        self.compress = compress
        self.chunk = chunk
        self._ids: list[int] | None = None  # None: to be read from the source
        self._chunks: dict[int, Chunk] = {}
        self._domain: str | None = None  # the base domain the JSON was built with
        self.rebuilt = 0  # chunks built (a test's and a profile's figure)

    def clear(self) -> None:
        self._ids = None
        self._chunks.clear()

    def added(self, nid: int) -> None:
        if self._ids is not None:
            i = bisect_left(self._ids, nid)
            if i == len(self._ids) or self._ids[i] != nid:
                insort(self._ids, nid)
        self._chunks.pop(nid // self.chunk, None)

    def changed(self, nid: int) -> None:
        self._chunks.pop(nid // self.chunk, None)

    def removed(self, nid: int) -> None:
        if self._ids is not None:
            i = bisect_left(self._ids, nid)
            if i < len(self._ids) and self._ids[i] == nid:
                del self._ids[i]
        self._chunks.pop(nid // self.chunk, None)

    def count(self, node_ids: Callable[[], Iterable[int]]) -> int:
        if self._ids is None:
            self._ids = sorted(node_ids())
        return len(self._ids)

    def peers(
        self,
        me: int,
        node: Callable[[int], models.Node | None],
        node_ids: Callable[[], Iterable[int]],
        cfg: mapper.MapConfig,
        now: datetime,
        cache: mapper.NodeJSONCache,
    ) -> tuple[SnapshotPeers, set[int]] | None:
        """Every node but ``me`` as a full map's Peers, and their users' IDs; None when a
        chunk is not shareable (the caller builds the map the ordinary way)."""
        if self._domain != cfg.base_domain:
            self._chunks.clear()
            self._domain = cfg.base_domain
        if self._ids is None:
            self._ids = sorted(node_ids())
        ids, c = self._ids, self.chunk
        parts: list[tuple[Chunk, tuple[dict[str, Any], ...] | None]] = []
        users: set[int] = set()
        i, n = 0, len(ids)
        while i < n:
            k = ids[i] // c
            j = bisect_left(ids, (k + 1) * c, i)
            ch = self._chunks.get(k)
            if ch is None:
                ch = self._chunks[k] = self._build(ids[i:j], node, cfg, now, cache)
            if not ch.shareable:
                return None
            users |= ch.users
            if me // c == k and me in ch.ids:
                at = ch.ids.index(me)
                parts.append((ch, ch.dicts[:at] + ch.dicts[at + 1 :]))
            else:
                parts.append((ch, None))
            i = j
        return SnapshotPeers(parts), users

    def _build(
        self,
        ids: list[int],
        node: Callable[[int], models.Node | None],
        cfg: mapper.MapConfig,
        now: datetime,
        cache: mapper.NodeJSONCache,
    ) -> Chunk:
        self.rebuilt += 1
        nodes = [n for i in ids if (n := node(i)) is not None]
        shareable = all(n.expiry is None and not mapper.has_routes(n) for n in nodes)
        dicts = tuple(cache.peer(n, cfg, now) for n in nodes) if shareable else ()
        return Chunk(
            ids=tuple(int(n.id) for n in nodes),
            dicts=dicts,
            users=frozenset(int(n.user_id) for n in nodes),
            shareable=shareable,
        )

    def payload(
        self,
        head: bytes,
        peers: SnapshotPeers,
        tail: bytes,
        encoded: Callable[[dict[str, Any]], bytes],
    ) -> bytes:
        """The zstd frames of ``head + b",".join(encoded(p) for p in peers) + tail``: the
        shared chunks' frames as they are, the viewer's own chunk compressed for it."""
        out = [self.compress(head)]
        first = True
        for ch, own in peers.parts:
            if own is None:
                data = ch.frames.get(first)
                if data is None:
                    raw = b",".join(map(encoded, ch.dicts))
                    data = ch.frames[first] = self.compress(raw if first else b"," + raw)
            elif own:
                raw = b",".join(map(encoded, own))
                data = self.compress(raw if first else b"," + raw)
            else:
                continue  # the viewer alone in its chunk
            out.append(data)
            first = False
        out.append(self.compress(tail))
        return b"".join(out)
