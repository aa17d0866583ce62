"""The machines list core: URL query parsing (hypothesis), search, filters, sort, paging,
and the search index following node changes."""

from __future__ import annotations

import ipaddress
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from meshscale.control.console import machines
from meshscale.control.models import Node, NodeID, User, UserID
from meshscale.key import MachinePublic, NodePublic

NOW = datetime(2026, 3, 1, tzinfo=UTC)
USERS = {1: User(UserID(1), "alice"), 2: User(UserID(2), "bob")}


def node(i: int, user: int = 1, **kw: object) -> Node:
    base = Node(NodeID(i), MachinePublic(bytes([i]) * 32), NodePublic(bytes([i]) * 32),
                UserID(user), f"host{i}", f"host{i}",
                ipv4=ipaddress.IPv4Address(f"100.64.0.{i}"),
                hostinfo={"OS": "linux", "IPNVersion": "1.96.4"},
                expiry=NOW + timedelta(days=1))  # fmt: skip
    return replace(base, **kw)  # type: ignore[arg-type]


@given(st.dictionaries(st.sampled_from(["q", "filter", "sort", "page", "per", "x"]),
                       st.text(max_size=30)))  # fmt: skip
def test_query_parse_never_fails_and_round_trips(args: dict[str, str]) -> None:
    q = machines.Query.parse(args)
    assert q.filter in machines.FILTERS and q.sort in machines.SORTS
    assert q.page >= 1 and 1 <= q.per <= machines.MAX_PER_PAGE
    assert machines.Query.parse(q.args()) == q


def test_search_filter_sort_page() -> None:
    nodes = [node(i, user=1 + i % 2) for i in range(1, 31)]
    nodes[4] = replace(nodes[4], tags=("tag:db",), hostinfo={"RoutableIPs": ["10.0.0.0/24"]})
    nodes[5] = replace(nodes[5], online=True, expiry=None,
                       hostinfo={"RoutableIPs": ["0.0.0.0/0", "::/0"]})  # fmt: skip
    sel = machines.select
    assert sel(nodes, USERS, machines.Query(q="bob"), NOW).total == 14  # node 5 is tagged
    assert [n.id for n in sel(nodes, USERS, machines.Query(q="100.64.0.7"), NOW).nodes] == [7]
    assert [n.id for n in sel(nodes, USERS, machines.Query(q="tag:db"), NOW).nodes] == [5]
    assert [n.id for n in sel(nodes, USERS, machines.Query(filter="exit-node"), NOW).nodes] == [6]
    assert [n.id for n in sel(nodes, USERS, machines.Query(filter="routes-pending"),
                              NOW).nodes] == [5, 6]  # fmt: skip
    assert sel(nodes, USERS, machines.Query(filter="expiry-disabled"), NOW).total == 1
    assert sel(nodes, USERS, machines.Query(filter="online"), NOW).nodes[0].id == 6
    assert sel(nodes, USERS, machines.Query(sort="last-seen"), NOW).nodes[0].id == 6
    page = sel(nodes, USERS, machines.Query(per=7, page=9), NOW)
    assert (page.page, page.pages, len(page.nodes)) == (5, 5, 2)  # clamped to the last page
    assert "exit node" in machines.badges(nodes[5], NOW)
    assert "expired" in machines.badges(nodes[0], NOW + timedelta(days=2))


def test_search_index_follows_changes() -> None:
    index = machines.SearchIndex()
    nodes = [node(1), node(2)]
    q = machines.Query(q="renamed")
    assert machines.select(nodes, USERS, q, NOW, index).total == 0
    nodes[0] = replace(nodes[0], given_name="renamed")  # State hands out a new Node
    assert machines.select(nodes, USERS, q, NOW, index).total == 1
    users = {**USERS, 1: User(UserID(1), "carol")}
    assert machines.select(nodes, users, machines.Query(q="carol"), NOW, index).total == 2
    machines.select(nodes[:1], users, machines.Query(q="x"), NOW, index)
    assert machines.select(nodes[:1], users, machines.Query(q="host2"), NOW, index).total == 0
