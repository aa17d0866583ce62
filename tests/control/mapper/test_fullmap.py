"""fullmap: full maps from shared compressed chunks. Every recipient's bytes must decode to
exactly its own map: viewers with different peer sets or per-viewer peer JSON never get each
other's chunks."""

from __future__ import annotations

import io
import json
import struct
from datetime import UTC, datetime
from typing import Any

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from meshscale.control.mapper import fullmap, mapper
from meshscale.control.mapper.batcher import Batcher, MapSession, SnapshotSource
from meshscale.control.mapper.poll import frame
from meshscale.control.models import NodeAdded, NodeChanged, NodeID, NodeRemoved
from meshscale.control.state import State
from meshscale.key import MachinePublic, NodePublic
from meshscale.policy import PolicyEngine
from meshscale.testing.mapsource import DERP, NOW, DictSource, numbered_node

CFG = mapper.MapConfig(base_domain="ts.example", domain="control.example", derp_map=DERP)


def inflate(body: bytes) -> bytes:
    """All frames of one payload, as our client and the official one read it."""
    dctx = zstandard.ZstdDecompressor()
    with dctx.stream_reader(io.BytesIO(body), read_across_frames=True) as r:
        return r.read()


def message_json(data: bytes) -> bytes:
    (n,) = struct.unpack_from("<I", data)
    assert len(data) == 4 + n
    return inflate(data[4:])


def enc(d: dict[str, Any]) -> bytes:
    return json.dumps(d, separators=(",", ":")).encode()


# A pool of shared peer dicts (what NodeJSONCache hands out) and, per viewer, a peer list
# made of: shared dicts, fresh dicts equal to a shared one, fresh dicts that differ (a
# router seen without its routes), with some peers left out (the viewer itself, hidden ones).
POOL = [{"ID": i, "Name": f"h{i}", "AllowedIPs": [f"100.64.0.{i}/32"]} for i in range(1, 41)]

view = st.lists(
    st.tuples(st.booleans(), st.sampled_from(["shared", "copy", "own"])), min_size=40, max_size=40
)


@settings(max_examples=60, deadline=None)
@given(views=st.lists(view, min_size=1, max_size=8), chunk=st.sampled_from([1, 3, 8, 64]))
def test_every_viewer_gets_exactly_its_own_peers(
    views: list[list[tuple[bool, str]]], chunk: int
) -> None:
    chunks = fullmap.PeerChunks(chunk=chunk)
    for v in views:
        peers: list[dict[str, Any]] = []
        for base, (keep, kind) in zip(POOL, v, strict=True):
            if not keep:
                continue
            if kind == "shared":
                peers.append(base)
            elif kind == "copy":
                peers.append(dict(base))
            else:
                peers.append({**base, "AllowedIPs": [*base["AllowedIPs"], "10.0.0.0/8"]})
        if not peers:
            continue
        head, tail = b'{"Node":{"ID":0},"Peers":[', b"]}"
        got = inflate(chunks.payload(head, peers, tail, enc))
        assert got == head + b",".join(enc(p) for p in peers) + tail
        assert json.loads(got)["Peers"] == peers
    assert len(chunks) <= chunks.variants * (40 // chunk + 2) * 2


def test_chunks_are_shared_and_a_changed_peer_misses_only_its_chunk() -> None:
    chunks = fullmap.PeerChunks(chunk=8)
    peers = POOL[:]
    chunks.payload(b"[", peers, b"]", enc)
    first = chunks.misses
    assert first == 6  # IDs 1..40 in ranges of 8: 0-7, 8-15, ..., 40-47
    chunks.payload(b"[", peers, b"]", enc)
    assert chunks.misses == first and chunks.hits == first
    changed = [*peers[:20], {**peers[20], "Name": "renamed"}, *peers[21:]]
    got = inflate(chunks.payload(b"[", changed, b"]", enc))
    assert chunks.misses == first + 1
    assert json.loads(got)[20]["Name"] == "renamed"


def test_batcher_full_map_bytes_equal_the_plain_encoding() -> None:
    n = 2 * fullmap.MIN_PEERS
    src = DictSource([numbered_node(i) for i in range(1, n + 1)])
    b = Batcher(src, lambda: CFG)  # type: ignore[arg-type]
    for i in (1, 2, 200, n):
        s = MapSession(NodeID(i), compress=True)
        b.add(s)
        msg = b.build(s, NOW)
        assert msg is not None
        plain = mapper.encode(msg, b.cache)
        assert message_json(b.encode(msg, True, frame)) == plain
        assert i not in [p["ID"] for p in json.loads(plain)["Peers"]]
    # Everyone sees everyone here: the maps come from the snapshot, each chunk built once.
    assert b.snap.rebuilt == n // fullmap.CHUNK + 1


T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
LAN = "198.51.100.0/24"
# Everyone sees everyone; only dev@ may use the router's subnet and exit routes.
POLICY = """{
  "acls": [
    {"action": "accept", "src": ["*"], "dst": ["ops@:*", "dev@:*", "other@:*"]},
    {"action": "accept", "src": ["dev@"], "dst": ["autogroup:internet:*", "198.51.100.0/24:*"]},
  ],
}"""


def test_viewers_with_different_route_views_never_share_a_router_chunk(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(fullmap, "MIN_PEERS", 16)  # small chunks: 60 nodes, 8 chunks
    s = State.open(":memory:", clock=lambda: T0, policy=PolicyEngine())
    ops, dev, other = s.create_user("ops"), s.create_user("dev"), s.create_user("other")
    routes = [LAN, "0.0.0.0/0", "::/0"]
    router = s.register_node(
        MachinePublic(b"\x01" * 32), NodePublic(b"\x01" * 32), ops.id,
        {"Hostname": "router", "RoutableIPs": routes},
    )  # fmt: skip
    s.approve_routes(router.id, routes)
    s.set_online(router.id, True)
    ids = {}
    for i in range(2, 60):
        uid = dev.id if i % 2 else other.id
        key = i.to_bytes(2, "big") * 16
        ids[i] = s.register_node(MachinePublic(key), NodePublic(key), uid, {"Hostname": f"n{i}"})
    s.set_policy(POLICY)
    b = Batcher(SnapshotSource(s), lambda: CFG)
    b.chunks = fullmap.PeerChunks(chunk=8)
    seen: dict[bool, list[str]] = {}
    for i in (3, 4, 5, 6):  # dev, other, dev, other (alternating, sharing the cache)
        sess = MapSession(ids[i].id, compress=True)
        b.add(sess)
        msg = b.build(sess, T0)
        assert msg is not None
        got = message_json(b.encode(msg, True, frame))
        assert got == mapper.encode(msg, b.cache)
        (r,) = [p for p in json.loads(got)["Peers"] if p["ID"] == router.id]
        extra = [a for a in r["AllowedIPs"] if a not in r["Addresses"]]
        seen.setdefault(i % 2 == 1, extra)
        assert seen[i % 2 == 1] == extra
    assert seen[True] == routes and seen[False] == []
    assert b.chunks.hits > 0


# Random node sets and changes: a full map from the warm caches (cached per-node JSON bytes
# and shared compressed chunks, issue #14 goal 4) must equal one built from scratch.
op = st.one_of(
    st.tuples(st.just("change"), st.integers(1, 700), st.integers(0, 9)),
    st.tuples(st.just("add"), st.integers(1, 700), st.integers(0, 9)),
    st.tuples(st.just("remove"), st.integers(1, 700), st.integers(0, 9)),
    st.tuples(st.just("build"), st.integers(1, 700), st.integers(0, 9)),
)


@settings(max_examples=25, deadline=None)
@given(
    ids=st.sets(st.integers(1, 700), min_size=fullmap.MIN_PEERS + 2, max_size=420),
    ops=st.lists(op, min_size=1, max_size=12),
)
def test_cached_full_map_equals_a_freshly_built_one(
    ids: set[int], ops: list[tuple[str, int, int]]
) -> None:
    src = DictSource([numbered_node(i) for i in ids])
    warm = Batcher(src, lambda: CFG)  # type: ignore[arg-type]

    def check(viewer: int) -> None:
        if viewer not in src.nodes:
            return
        got = []
        for b in (warm, Batcher(src, lambda: CFG)):  # type: ignore[arg-type]
            s = MapSession(NodeID(viewer), compress=True)
            b.add(s)
            msg = b.build(s, NOW)
            assert msg is not None
            got.append(message_json(b.encode(msg, True, frame)))
            b.remove(s)
        assert got[0] == got[1]
        assert viewer not in [p["ID"] for p in json.loads(got[0])["Peers"]]

    check(min(ids))
    for kind, i, v in ops:  # each with its event, as State publishes them
        if kind == "change" and i in src.nodes:  # a new node snapshot (endpoint, name)
            src.nodes[i] = numbered_node(
                i, endpoints=(f"192.0.2.{v + 1}:{41641 + v}",), given_name=f"h{i}-{v}"
            )
            warm.handle(NodeChanged(NodeID(i), frozenset({"endpoints", "given_name"})))
        elif kind == "add":
            new = i not in src.nodes
            src.nodes[i] = numbered_node(i)
            warm.handle(NodeAdded(NodeID(i)) if new else NodeChanged(NodeID(i), frozenset()))
        elif kind == "remove" and len(src.nodes) > 1 and i in src.nodes:
            src.nodes.pop(i)
            warm.handle(NodeRemoved(NodeID(i)))
        check(i if kind == "build" else min(src.nodes))
    # A second build with nothing changed in between reuses the warm chunks (when the map
    # is still big enough to be cut into chunks at all): everyone sees everyone here, so
    # they are the snapshot's (snapshot.py), and none is rebuilt.
    check(min(src.nodes))
    before = warm.snap.rebuilt
    check(min(src.nodes))
    if len(src.nodes) > fullmap.MIN_PEERS + 1:
        assert before > 0 and warm.snap.rebuilt == before
