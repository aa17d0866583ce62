"""The machines list, sans-IO: search, filters, sort and paging over State's nodes.

The query lives in the page URL (``?q=&filter=&sort=&page=``), as in Tailscale's console,
so a filtered view can be bookmarked and reloaded. Only the page shown is turned into rows,
which keeps a 10,000-node tailnet's page well under the 200 ms the issue sets.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from operator import attrgetter

from meshscale.control.models import Node, User

EXIT_ROUTES = frozenset({ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0")})
PER_PAGE = 50
MAX_PER_PAGE = 500
FILTERS: Mapping[str, str] = {
    "": "all machines",
    "online": "online",
    "offline": "offline",
    "expired": "key expired",
    "expiry-disabled": "expiry disabled",
    "ephemeral": "ephemeral",
    "tagged": "tagged",
    "subnet-router": "subnet router",
    "exit-node": "exit node",
    "routes-pending": "routes awaiting approval",
}
SORTS: Mapping[str, str] = {"name": "name", "last-seen": "last seen", "created": "created"}


@dataclass(frozen=True, slots=True)
class Query:
    q: str = ""
    filter: str = ""
    sort: str = "name"
    page: int = 1
    per: int = PER_PAGE

    @classmethod
    def parse(cls, args: Mapping[str, str]) -> Query:
        """From the URL query; anything unknown or malformed falls back to the default."""
        filt = args.get("filter", "")
        sort = args.get("sort", "name")
        return cls(
            q=args.get("q", "").strip()[:200],
            filter=filt if filt in FILTERS else "",
            sort=sort if sort in SORTS else "name",
            page=_int(args.get("page"), 1, 1, 1_000_000),
            per=_int(args.get("per"), PER_PAGE, 1, MAX_PER_PAGE),
        )

    def args(self, **change: str | int) -> dict[str, str]:
        """The URL query for this view with ``change`` applied (defaults left out)."""
        out = {"q": self.q, "filter": self.filter, "sort": self.sort, "page": str(self.page),
               "per": str(self.per)}  # fmt: skip
        out.update({k: str(v) for k, v in change.items()})
        defaults = {"q": "", "filter": "", "sort": "name", "page": "1", "per": str(PER_PAGE)}
        return {k: v for k, v in out.items() if defaults.get(k) != v}


def _int(text: str | None, default: int, lo: int, hi: int) -> int:
    if text is None or not (text.isascii() and text.isdigit()) or len(text) > 9:
        return default
    return min(max(int(text), lo), hi)


def route_flags(node: Node) -> tuple[bool, bool, bool]:
    """(exit node, subnet router, routes awaiting approval) from the announced routes."""
    announced = node.announced_routes()
    if not announced:
        return False, False, False
    approved = set(node.approved_routes)
    return (bool(EXIT_ROUTES & set(announced)), any(r not in EXIT_ROUTES for r in announced),
            any(r not in approved for r in announced))  # fmt: skip


def matches_filter(
    node: Node, filt: str, now: datetime, flags: tuple[bool, bool, bool] | None = None
) -> bool:
    if filt == "online":
        return node.online
    if filt == "offline":
        return not node.online
    if filt == "expired":
        return node.is_expired(now)
    if filt == "expiry-disabled":
        return node.expiry is None
    if filt == "ephemeral":
        return node.ephemeral
    if filt == "tagged":
        return bool(node.tags)
    if filt in ("subnet-router", "exit-node", "routes-pending"):
        exit_node, subnets, pending = flags if flags is not None else route_flags(node)
        return {"exit-node": exit_node, "subnet-router": subnets, "routes-pending": pending}[filt]
    return True


def haystack(node: Node, owner: str) -> str:
    """What a search matches: names, addresses, owner, tags, OS and client version."""
    hi = node.hostinfo
    parts = [node.given_name, node.hostname, owner, *node.tags,
             str(hi.get("OS") or ""), str(hi.get("IPNVersion") or "")]  # fmt: skip
    parts += [str(a) for a in node.addresses()]
    return "\n".join(parts).lower()


def owner_of(node: Node, users: Mapping[int, User]) -> str:
    if node.tags:
        return ", ".join(node.tags)
    user = users.get(node.user_id)
    return user.name if user is not None else ""


@dataclass(frozen=True, slots=True)
class Page:
    nodes: list[Node]
    total: int  # matching the query, across all pages
    page: int
    pages: int


class SearchIndex:
    """Each node's search text, rebuilt only for nodes that changed since the last query
    (State hands out a new frozen Node on every write, so identity tells)."""

    def __init__(self) -> None:
        self._text: dict[int, tuple[Node, str, str]] = {}
        self._flags: dict[int, tuple[Node, tuple[bool, bool, bool]]] = {}

    def flags(self, node: Node) -> tuple[bool, bool, bool]:
        hit = self._flags.get(node.id)
        if hit is not None and hit[0] is node:
            return hit[1]
        flags = route_flags(node)
        self._flags[node.id] = (node, flags)
        return flags

    def text(self, node: Node, owner: str) -> str:
        hit = self._text.get(node.id)
        if hit is not None and hit[0] is node and hit[1] == owner:
            return hit[2]
        text = haystack(node, owner)
        self._text[node.id] = (node, owner, text)
        return text

    def matches(self, node: Node, owner: str, words: list[str]) -> bool:
        text = self.text(node, owner)
        return all(w in text for w in words)

    def prune(self, nodes: list[Node]) -> None:
        """Forget deleted nodes."""
        for cache in (self._text, self._flags):
            if len(cache) > len(nodes):
                for gone in set(cache) - {n.id for n in nodes}:
                    del cache[gone]


def select(
    nodes: Iterable[Node], users: Mapping[int, User], query: Query, now: datetime,
    index: SearchIndex | None = None,
) -> Page:  # fmt: skip
    """The nodes of one page of the list, after search and filter, sorted."""
    words = query.q.lower().split()
    index = index if index is not None else SearchIndex()
    every = list(nodes)
    filt = query.filter
    hits = every
    if filt:
        hits = [n for n in every if matches_filter(n, filt, now, index.flags(n))]
    if words:
        hits = [n for n in hits if index.matches(n, owner_of(n, users), words)]
    if filt or words:
        index.prune(every)
    if query.sort == "last-seen":
        hits.sort(key=lambda n: (not n.online, -(n.last_seen.timestamp() if n.last_seen else 0)))
    elif query.sort == "created":
        hits.sort(key=lambda n: n.created_at.timestamp() if n.created_at else 0, reverse=True)
    else:
        hits.sort(key=attrgetter("given_name"))  # unique: State keeps given names distinct
    pages = max(1, -(-len(hits) // query.per))
    page = min(query.page, pages)
    start = (page - 1) * query.per
    return Page(hits[start : start + query.per], len(hits), page, pages)


def badges(node: Node, now: datetime) -> list[str]:
    out = []
    if node.tags:
        out.append("tagged")
    if node.ephemeral:
        out.append("ephemeral")
    exit_node, subnets, pending = route_flags(node)
    if exit_node:
        out.append("exit node")
    if subnets:
        out.append("subnet router")
    if pending:
        out.append("routes pending")
    if node.expiry is None:
        out.append("expiry disabled")
    elif node.is_expired(now):
        out.append("expired")
    return out
