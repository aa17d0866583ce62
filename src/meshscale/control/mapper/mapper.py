"""Building MapResponses: pure functions of the state snapshot and the receiving node.

Headscale's hscontrol/mapper idea (docs/style.md §11): the long poll (poll.py) is only the
driver; the batcher (batcher.py) decides *what* changed for whom; this module turns a
snapshot into wire JSON (docs/protocol/control.md §4.3-4.5, 6):

    full_map(self, peers, users,        first message: Node, DERPMap, Peers, PacketFilters,
             packet_filter=)            UserProfiles, DNSConfig, Domain, Debug, ...
    delta_map(self?, changed, patches,  later messages: PeersChanged / PeersChangedPatch /
              removed, users)           OnlineChange / PeerSeenChange / PeersRemoved
                                        (+ self Node when it changed)

The peer list and the packet filter are the policy's answers for the receiving node
(:class:`~meshscale.policy.PolicyManager`, asked through State); the mapper only encodes
them. Peer Node JSON is memoised per node snapshot object (State replaces a Node on every
write), so a change costs one encoding, not one per receiver.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from meshscale.control import models
from meshscale.tailcfg import (
    DERP_MAGIC_IP,
    DERPMap,
    DNSConfig,
    FilterRule,
    Node,
    PeerChange,
    Resolver,
    UserProfile,
    format_time,
    to_json,
)

# CapMap sent on the self node (Headscale's baseline; none of these need further protocol).
SELF_CAP_MAP: dict[str, list[Any] | None] = {"https://tailscale.com/cap/is-admin": []}

# NodeChanged fields a PeerChange patch can express; anything else sends the full node.
PATCHABLE_FIELDS = frozenset({"endpoints", "online", "last_seen", "disco_key", "home_derp"})
ONLINE_FIELDS = frozenset({"online", "last_seen"})


@dataclass(frozen=True, slots=True)
class MapConfig:
    """What the mapper needs from the server configuration."""

    base_domain: str  # MagicDNS suffix, e.g. "tailnet.example"
    domain: str  # MapResponse.Domain: the tailnet name (Headscale: server hostname)
    derp_map: DERPMap
    dns_config: DNSConfig | None = None
    disable_log_tail: bool = True


def for_domain(cfg: MapConfig, base_domain: str) -> MapConfig:
    """``cfg`` for a tailnet with its own MagicDNS base domain (issue #16): node names and
    the DNS route and search domain of the server's base domain become ``base_domain``'s."""
    if not base_domain or base_domain == cfg.base_domain:
        return cfg
    dns = cfg.dns_config
    if dns is not None:
        old = cfg.base_domain
        dns = replace(
            dns,
            Routes={(base_domain if k == old else k): v for k, v in dns.Routes.items()},
            Domains=[base_domain if d == old else d for d in dns.Domains],
        )
    return replace(cfg, base_domain=base_domain, dns_config=dns)


def with_routes(cfg: MapConfig, domains: Iterable[str]) -> MapConfig:
    """``cfg`` whose MagicDNS also answers ``domains`` (the base domains of other tailnets'
    nodes shared into this viewer): only when MagicDNS routes its own base domain."""
    dns = cfg.dns_config
    if dns is None or cfg.base_domain not in dns.Routes:
        return cfg
    add: dict[str, list[Resolver]] = {d: [] for d in domains if d not in dns.Routes}
    if not add:
        return cfg
    routes = {**dns.Routes, **add}
    return replace(cfg, dns_config=replace(dns, Routes=routes))


def build_dns_config(
    base_domain: str,
    *,
    magic_dns: bool = True,
    nameservers: Iterable[str] = (),
    search_domains: Iterable[str] = (),
    override_local_dns: bool = False,
    prefixes: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network] = (),
) -> DNSConfig:
    """DNSConfig from configuration (docs/protocol/control.md §6.2). Routes use [] (never null) for
    the zones answered locally; nameservers become Resolvers only when overriding local DNS."""
    resolvers = [Resolver(Addr=a) for a in nameservers]
    cfg = DNSConfig(Proxied=magic_dns)
    if override_local_dns:
        cfg.Resolvers = resolvers
    else:
        cfg.FallbackResolvers = resolvers
    domains = list(search_domains)
    if magic_dns and base_domain:
        cfg.Routes[base_domain] = []
        domains.insert(0, base_domain)
        for p in prefixes:
            for zone in _reverse_zones(p):
                cfg.Routes[zone] = []
    cfg.Domains = domains
    return cfg


def _reverse_zones(prefix: ipaddress.IPv4Network | ipaddress.IPv6Network) -> list[str]:
    if isinstance(prefix, ipaddress.IPv4Network):
        # 100.64.0.0/10 -> 64.100 ... 127.100: one zone per /16.
        if prefix.prefixlen > 16:
            return [
                ".".join(reversed(str(prefix.network_address).split(".")[:2])) + ".in-addr.arpa"
            ]
        subnets = prefix.subnets(new_prefix=16) if prefix.prefixlen < 16 else [prefix]
        return [
            ".".join(reversed(str(s.network_address).split(".")[:2])) + ".in-addr.arpa"
            for s in subnets
        ]
    nibbles = prefix.prefixlen // 4
    full = prefix.network_address.exploded.replace(":", "")
    return [".".join(reversed(full[:nibbles])) + ".ip6.arpa"]


def fqdn(node: models.Node, base_domain: str) -> str:
    """MagicDNS name with the trailing dot the client requires."""
    return f"{node.given_name}.{base_domain}." if base_domain else f"{node.given_name}."


def home_derp(node: models.Node) -> int:
    netinfo = node.hostinfo.get("NetInfo")
    if isinstance(netinfo, dict):
        derp = netinfo.get("PreferredDERP")
        if isinstance(derp, int) and not isinstance(derp, bool) and derp > 0:
            return derp
    return 0


# The routes one viewer may see of a peer (None: all of them).
RoutesView = frozenset[Any] | None
RoutesFor = Callable[[models.Node], RoutesView]


ShareView = models.ShareView
ShareFor = Callable[[models.Node], ShareView | None]


def has_routes(node: models.Node) -> bool:
    """Whether the node serves any prefix beyond its addresses (then its JSON may differ
    per viewer). Cheap for the usual node: routes are served only once some are approved."""
    if not node.approved_routes:  # nothing served: no primary nor exit routes
        return False
    return bool(node.primary_routes() or node.exit_routes())


def viewer_peer_json(
    node: models.Node, cfg: MapConfig, now: datetime, cache: NodeJSONCache,
    routes_for: RoutesFor | None, share_for: ShareFor | None = None,
) -> dict[str, Any]:  # fmt: skip
    """A peer's JSON for one viewer: the shared cached dict unless the viewer's route view
    hides some of the peer's routes (docs/protocol/policy.md §5.3) or the peer is of
    another tailnet (a :class:`ShareView`)."""
    share = share_for(node) if share_for is not None else None
    if share is not None:
        return to_json(tail_node(node, cfg, now, share=share))
    if routes_for is not None and has_routes(node):
        view = routes_for(node)
        if view is not None:
            served = (*node.primary_routes(), *node.exit_routes())
            if not all(r in view for r in served):
                return to_json(tail_node(node, cfg, now, routes=view))
    return cache.peer(node, cfg, now)


def only_home_derp_changed(old: models.Node, new: models.Node) -> bool:
    """True when two Hostinfos differ only in NetInfo.PreferredDERP (to a non-zero region),
    which a PeerChange can carry instead of the whole node (a patch cannot say 0)."""
    if home_derp(new) == 0 or home_derp(old) == home_derp(new):
        return False

    def strip(hi: dict[str, Any]) -> dict[str, Any]:
        out = dict(hi)
        netinfo = out.get("NetInfo")
        if isinstance(netinfo, dict):
            out["NetInfo"] = {k: v for k, v in netinfo.items() if k != "PreferredDERP"}
        return out

    return strip(old.hostinfo) == strip(new.hostinfo)


def _prefixes(node: models.Node) -> list[str]:
    return [f"{a}/{a.max_prefixlen}" for a in node.addresses()]


def tail_node(
    node: models.Node, cfg: MapConfig, now: datetime, *, is_self: bool = False,
    self_caps: Mapping[str, None] | None = None, routes: RoutesView = None,
    share: ShareView | None = None,
) -> Node:  # fmt: skip
    """A models.Node as tailcfg.Node (docs/protocol/control.md §4.5). ``routes``: the
    prefixes the receiving viewer may have (None: all; docs/protocol/policy.md §5.3).
    ``share``: the peer is of another tailnet (see :class:`ShareView`)."""
    if share is not None:
        routes = frozenset()  # its own addresses only (policy.md §6 item 5)
    addrs = _prefixes(node)
    primary = [str(r) for r in node.primary_routes() if routes is None or r in routes]
    exit_routes = node.exit_routes()
    if routes is not None and not all(r in routes for r in exit_routes):
        exit_routes = ()
    exits = [str(r) for r in exit_routes]  # never in PrimaryRoutes (policy.md §5.3)
    expired = node.is_expired(now)
    n = Node(
        ID=int(node.id),
        StableID=str(node.id),
        Name=fqdn(node, cfg.base_domain),
        User=int(node.user_id),
        Key=node.node_key,
        KeyExpiry=node.expiry,
        Machine=node.machine_key,
        DiscoKey=node.disco_key,
        Addresses=addrs,
        AllowedIPs=addrs + primary + exits,
        Endpoints=list(node.endpoints),
        HomeDERP=home_derp(node),
        Hostinfo=node.hostinfo or {},
        Created=node.created_at,
        Tags=list(node.tags),
        PrimaryRoutes=primary,
        Online=node.online,
        MachineAuthorized=not expired if is_self else True,
        Expired=expired,
    )
    if not node.online and node.last_seen is not None:
        n.LastSeen = node.last_seen  # only for offline peers (docs/protocol/control.md §7.5)
    if share is not None:
        if share.name:
            n.Name = share.name
        elif share.zone:  # its tailnet has no domain of its own: a label of its own
            n.Name = fqdn(
                node, f"{share.zone}.{cfg.base_domain}" if cfg.base_domain else share.zone
            )
        # Nor the prefixes it advertises: another tailnet's networks stay its own (ts#10642).
        n.Hostinfo = {k: v for k, v in n.Hostinfo.items() if k != "RoutableIPs"}
        if share.sharer:
            n.Sharer, n.IsJailed = share.sharer, True
        if share.sharee:
            n.Hostinfo["ShareeNode"] = True
    if is_self:  # plus the policy's nodeAttrs for this node (null values)
        n.CapMap = {**SELF_CAP_MAP, **(self_caps or {})}
    return n


def user_profile(user: models.User) -> UserProfile:
    return UserProfile(ID=int(user.id), LoginName=user.login_name,
                       DisplayName=user.display_name or user.name)  # fmt: skip


@dataclass(slots=True)
class NodeJSONCache:
    """Memoised peer JSON per node snapshot object (identity), bounded by the node count.

    Holds each peer's JSON-ready dict and, once encoded, its bytes: ``encode`` splices those
    bytes into Peers/PeersChanged, so a full map of N peers costs a join, not N encodings.
    """

    _entries: dict[int, tuple[models.Node, dict[str, Any]]] = field(default_factory=dict)
    _bytes: dict[int, tuple[dict[str, Any], bytes]] = field(default_factory=dict)
    _known: dict[int, models.Node] = field(default_factory=dict)

    def clear_json(self) -> None:
        """Drop every cached JSON (a base domain changed: names in it are stale); the
        node snapshots kept for diffs stay."""
        self._entries.clear()
        self._bytes.clear()

    def peer(self, node: models.Node, cfg: MapConfig, now: datetime) -> dict[str, Any]:
        hit = self._entries.get(node.id)
        # Expiry is time-dependent: recompute when the cached view went stale.
        if (
            hit is not None
            and hit[0] is node
            and (node.expiry is None or hit[1].get("Expired", False) == node.is_expired(now))
        ):
            return hit[1]
        d = to_json(tail_node(node, cfg, now))
        self.forget(node.id)
        self._entries[node.id] = (node, d)
        self._known[node.id] = node
        return d

    def peers(
        self, nodes: Iterable[models.Node], cfg: MapConfig, now: datetime,
        routes_for: RoutesFor | None, share_for: ShareFor | None = None,
    ) -> list[dict[str, Any]]:  # fmt: skip
        """``viewer_peer_json`` of each node, with the common case (cached, no expiry, no
        routes) inlined: a full map of N peers is N of these."""
        get = self._entries.get
        out = []
        for n in nodes:
            hit = get(n.id)
            if (
                hit is not None and hit[0] is n and n.expiry is None and not n.approved_routes
                and (share_for is None or share_for(n) is None)
            ):  # fmt: skip
                out.append(hit[1])
            else:
                out.append(viewer_peer_json(n, cfg, now, self, routes_for, share_for))
        return out

    def encoded(self, d: dict[str, Any]) -> bytes:
        """The JSON bytes of a dict returned by ``peer`` (encoded once)."""
        hit = self._bytes.get(id(d))
        if hit is not None and hit[0] is d:
            return hit[1]
        raw = json.dumps(d, separators=(",", ":"), ensure_ascii=False).encode()
        entry = self._entries.get(d.get("ID", -1))
        if entry is not None and entry[1] is d:  # only cache what we own (bounded)
            self._bytes[id(d)] = (d, raw)
        return raw

    def snapshot(self, node_id: int) -> models.Node | None:
        """The node as peers' clients last learnt it (full node or patch), if known."""
        return self._known.get(node_id)

    def remember(self, node: models.Node) -> None:
        """Record that peers were told about ``node`` (by a patch)."""
        self._known[node.id] = node

    def drop(self, node_id: int) -> None:
        """The node is gone: forget everything about it."""
        self.forget(node_id)
        self._known.pop(node_id, None)

    def forget(self, node_id: int) -> None:
        old = self._entries.pop(node_id, None)
        if old is not None:
            self._bytes.pop(id(old[1]), None)


def _sharers(peers: Iterable[dict[str, Any]]) -> set[models.UserID]:
    return {models.UserID(int(d["Sharer"])) for d in peers if d.get("Sharer")}


def _profiles(users: Iterable[models.User]) -> list[dict[str, Any]]:
    return [to_json(user_profile(u)) for u in sorted(users, key=lambda u: u.id)]


def full_map(
    node: models.Node,
    peers: Sequence[models.Node],
    users: dict[models.UserID, models.User],
    cfg: MapConfig,
    now: datetime,
    cache: NodeJSONCache | None = None,
    *,
    packet_filter: Sequence[FilterRule],
    self_caps: Mapping[str, None] | None = None,
    routes_for: RoutesFor | None = None,
    share_for: ShareFor | None = None,
    snapshot: tuple[list[dict[str, Any]], Iterable[int]] | None = None,
) -> dict[str, Any]:
    """The first message of a map stream, as JSON-ready values. ``peers`` and
    ``packet_filter`` are the policy's answers for ``node`` (docs/protocol/control.md §6.3).

    ``snapshot``: the peers' JSON already built (snapshot.py: every node but this one, none
    shared) and their users' IDs, instead of ``peers``."""
    cache = cache or NodeJSONCache()
    user_ids: set[models.UserID]
    if snapshot is not None:
        peer_json = snapshot[0]
        user_ids = {node.user_id, *(models.UserID(u) for u in snapshot[1])}
    else:
        peer_json = cache.peers(sorted(peers, key=lambda p: p.id), cfg, now, routes_for, share_for)
        # A shared-in peer's owner and sharer both need a profile (policy.md §6).
        user_ids = {node.user_id, *(p.user_id for p in peers), *_sharers(peer_json)}
    out: dict[str, Any] = {
        "Node": to_json(tail_node(node, cfg, now, is_self=True, self_caps=self_caps)),
        "DERPMap": to_json(cfg.derp_map),
        "Domain": cfg.domain,
        "CollectServices": False,
        "PacketFilters": {"base": [to_json(r) for r in packet_filter]},
        "UserProfiles": _profiles(users[u] for u in user_ids if u in users),
        "ControlTime": format_time(now),
    }
    if peer_json:
        out["Peers"] = peer_json
    if cfg.dns_config is not None:
        out["DNSConfig"] = to_json(cfg.dns_config)
    if cfg.disable_log_tail:
        out["Debug"] = {"DisableLogTail": True}
    return out


def peer_patch(node: models.Node, fields: frozenset[str]) -> PeerChange:
    """A PeersChangedPatch entry for changes in PATCHABLE_FIELDS (docs/protocol/control.md §4.4)."""
    pc = PeerChange(NodeID=int(node.id))
    if "home_derp" in fields:
        pc.DERPRegion = home_derp(node)
    if "endpoints" in fields:
        pc.Endpoints = list(node.endpoints)
    if "disco_key" in fields and node.disco_key is not None:
        pc.DiscoKey = node.disco_key
    if fields & {"online", "last_seen"}:
        pc.Online = node.online
        if not node.online and node.last_seen is not None:
            pc.LastSeen = node.last_seen
    return pc


def delta_map(
    *,
    self_node: models.Node | None,
    changed: Sequence[models.Node],
    patches: Sequence[tuple[models.Node, frozenset[str]]],
    removed: Iterable[int],
    users: dict[models.UserID, models.User],
    cfg: MapConfig,
    now: datetime,
    cache: NodeJSONCache | None = None,
    new_users: Iterable[models.UserID] = (),
    self_caps: Mapping[str, None] | None = None,
    routes_for: RoutesFor | None = None,
    share_for: ShareFor | None = None,
) -> dict[str, Any] | None:
    """An incremental message; None when there is nothing to say."""
    cache = cache or NodeJSONCache()
    out: dict[str, Any] = {}
    if self_node is not None:
        out["Node"] = to_json(tail_node(self_node, cfg, now, is_self=True, self_caps=self_caps))
    if changed:
        out["PeersChanged"] = [
            viewer_peer_json(p, cfg, now, cache, routes_for, share_for)
            for p in sorted(changed, key=lambda p: p.id)
        ]
    # Pure online/offline flips travel in OnlineChange and PeerSeenChange (the client sets
    # LastSeen from its own clock; we show LastSeen only for offline peers,
    # docs/protocol/control.md §7.5); anything else patchable goes in PeersChangedPatch.
    full_patches = []
    for n, f in sorted(patches, key=lambda t: t[0].id):
        if f <= ONLINE_FIELDS:
            out.setdefault("OnlineChange", {})[str(n.id)] = n.online
            out.setdefault("PeerSeenChange", {})[str(n.id)] = not n.online
        else:
            full_patches.append(to_json(peer_patch(n, f)))
    if full_patches:
        out["PeersChangedPatch"] = full_patches
    gone = sorted(set(removed))
    if gone:
        out["PeersRemoved"] = gone
    uids = set(new_users) | {p.user_id for p in changed} | _sharers(out.get("PeersChanged", ()))
    if uids:
        out["UserProfiles"] = _profiles(users[u] for u in uids if u in users)
    return out or None


_SPLICED = ("Peers", "PeersChanged")


def with_legacy_derp(node: dict[str, Any]) -> dict[str, Any]:
    """A node's JSON with the legacy ``"DERP": "127.3.3.40:<region>"`` beside ``HomeDERP``:
    clients older than capability version 111 (v1.80) read only that string
    (docs/protocol/control.md §4.5), and without it see every peer without a home region."""
    region = node.get("HomeDERP")
    if not region:
        return node
    return {**node, "DERP": f"{DERP_MAGIC_IP}:{region}"}


def encode(
    message: dict[str, Any], cache: NodeJSONCache | None = None, *, legacy_derp: bool = False
) -> bytes:
    """Compact JSON bytes of a message built here; peer nodes come from ``cache`` bytes.

    ``legacy_derp`` (a client below CAPVER_HOME_DERP) adds the legacy DERP string to the
    self node and every peer; those peers are encoded anew, not spliced from the cache."""
    if legacy_derp:
        message = dict(message)
        if "Node" in message:
            message["Node"] = with_legacy_derp(message["Node"])
        for k in _SPLICED:
            if k in message:
                message[k] = [with_legacy_derp(d) for d in message[k]]
        cache = None
    if cache is None or not any(k in message for k in _SPLICED):
        return json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode()
    rest = {k: v for k, v in message.items() if k not in _SPLICED}
    head = json.dumps(rest, separators=(",", ":"), ensure_ascii=False).encode()
    parts = [
        b'"' + k.encode() + b'":[' + b",".join(cache.encoded(d) for d in message[k]) + b"]"
        for k in _SPLICED
        if k in message
    ]
    sep = b"" if head == b"{}" else b","
    return head[:-1] + sep + b",".join(parts) + b"}"


def encode_split(
    message: dict[str, Any], cache: NodeJSONCache
) -> tuple[bytes, list[dict[str, Any]], bytes] | None:
    """A full map as (head, peers, tail): ``head + b",".join(cache.encoded(p) for p in peers)
    + tail`` is ``encode(message, cache)`` byte for byte (fullmap.py compresses the peers in
    shared chunks). None for a message without Peers, or with PeersChanged too."""
    peers = message.get("Peers")
    if not isinstance(peers, list) or not peers or "PeersChanged" in message:
        return None
    rest = {k: v for k, v in message.items() if k != "Peers"}
    head = json.dumps(rest, separators=(",", ":"), ensure_ascii=False).encode()
    sep = b"" if head == b"{}" else b","
    return head[:-1] + sep + b'"Peers":[', peers, b"]}"
