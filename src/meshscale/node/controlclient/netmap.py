"""NetworkMap: the node's view of the tailnet, built from a map stream's full message and
deltas (tailscale control/controlclient/map.go, types/netmap). Pure: no I/O.

Delta rules applied by ``apply`` (docs/protocol/control.md §4.3)::

    Node              replaces our own node
    DERPMap           replaces the map unless its Regions are empty ("unchanged")
    Peers (non-empty) replaces the whole peer set
    PeersChanged      upserts peers by ID
    PeersRemoved      drops peers by ID
    PeersChangedPatch patches single fields (DERPRegion, Endpoints, Key, DiscoKey, Online, ...)
    OnlineChange / PeerSeenChange   patch Online
    UserProfiles      merge by ID
    PacketFilters     named filters; a None value deletes one, "*": None clears all first
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from meshscale.tailcfg import DERPMap, DNSConfig, FilterRule, MapResponse, Node, UserProfile


@dataclass(slots=True)
class NetworkMap:
    self_node: Node | None = None
    peers: dict[int, Node] = field(default_factory=dict)
    derp_map: DERPMap = field(default_factory=DERPMap)
    user_profiles: dict[int, UserProfile] = field(default_factory=dict)
    domain: str = ""
    dns: DNSConfig | None = None
    packet_filters: dict[str, list[FilterRule]] = field(default_factory=dict)
    seq: int = 0

    def apply(self, resp: MapResponse) -> bool:
        """Fold one MapResponse in. Returns True if anything but keep-alive state changed."""
        if resp.KeepAlive and resp == MapResponse(KeepAlive=True):
            return False
        self.seq += 1
        if resp.Node is not None:
            self.self_node = resp.Node
        if resp.DERPMap is not None and resp.DERPMap.Regions:
            self.derp_map = resp.DERPMap
        if resp.Peers:
            self.peers = {p.ID: p for p in resp.Peers}
        for p in resp.PeersChanged:
            self.peers[p.ID] = p
        for pid in resp.PeersRemoved:
            self.peers.pop(pid, None)
        for ch in resp.PeersChangedPatch:
            old = self.peers.get(ch.NodeID)
            if old is None:
                continue
            p = copy.copy(old)
            if ch.DERPRegion:
                p.HomeDERP = ch.DERPRegion
            if ch.Cap:
                p.Cap = ch.Cap
            if ch.Endpoints is not None:
                p.Endpoints = list(ch.Endpoints)
            if ch.Key is not None:
                p.Key = ch.Key
            if ch.DiscoKey is not None:
                p.DiscoKey = ch.DiscoKey
            if ch.Online is not None:
                p.Online = ch.Online
            if ch.LastSeen is not None:
                p.LastSeen = ch.LastSeen
            if ch.KeyExpiry is not None:
                p.KeyExpiry = ch.KeyExpiry
            if ch.CapMap:
                p.CapMap = dict(ch.CapMap)
            self.peers[ch.NodeID] = p
        for pid, online in resp.OnlineChange.items():
            self._set_online(pid, online)
        for pid, seen in resp.PeerSeenChange.items():
            if not seen:
                self._set_online(pid, False)
        for up in resp.UserProfiles:
            self.user_profiles[up.ID] = up
        if resp.Domain:
            self.domain = resp.Domain
        if resp.DNSConfig is not None:
            self.dns = resp.DNSConfig
        if resp.PacketFilter:
            self.packet_filters = {"base": list(resp.PacketFilter)}
        if resp.PacketFilters:
            if "*" in resp.PacketFilters and resp.PacketFilters["*"] is None:
                self.packet_filters = {}
            for name, rules in resp.PacketFilters.items():
                if name == "*":
                    continue
                if rules is None:
                    self.packet_filters.pop(name, None)
                else:
                    self.packet_filters[name] = list(rules)
        return True

    def _set_online(self, pid: int, online: bool) -> None:
        old = self.peers.get(pid)
        if old is not None:
            p = copy.copy(old)
            p.Online = online
            self.peers[pid] = p

    def filter_rules(self) -> list[FilterRule]:
        """All named filters concatenated in name order, as the client does."""
        out: list[FilterRule] = []
        for name in sorted(self.packet_filters):
            out += self.packet_filters[name]
        return out

    def peer_by_ip(self, ip: str) -> Node | None:
        for p in self.peers.values():
            if any(a.split("/", 1)[0] == ip for a in p.Addresses):
                return p
        return None
