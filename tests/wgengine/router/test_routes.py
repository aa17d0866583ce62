"""Advertised-route validation: every refusal names the value, nothing is half-accepted."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshscale.wgengine.router.nft import ruleset
from meshscale.wgengine.router.routes import (
    MAX_ADVERTISED_ROUTES,
    RouteError,
    calc_advertise_routes,
    check_advertise_routes,
    parse_route_list,
)


def test_valid_routes_sorted_with_exit_routes_last_per_family() -> None:
    got = calc_advertise_routes("192.168.1.0/24, 10.0.0.0/8,fd00::/64", exit_node=True)
    assert [str(n) for n in got] == [
        "0.0.0.0/0", "10.0.0.0/8", "192.168.1.0/24", "::/0", "fd00::/64",
    ]  # fmt: skip
    assert calc_advertise_routes("", exit_node=False) == []
    assert [str(n) for n in calc_advertise_routes("198.51.100.7/32", False)] == ["198.51.100.7/32"]


@pytest.mark.parametrize(("text", "needle"), [
    ("10.0.0.0/33", "not an IP prefix"),
    ("banana", "not an IP prefix"),
    ("10.0.0/8", "not an IP prefix"),
    ("192.168.1.5", "host address, not a route; write 192.168.1.5/32"),
    ("192.168.1.5/24", "host bits set; did you mean 192.168.1.0/24"),
    ("10.0.0.0/8,10.1.0.0/16", "10.0.0.0/8 and 10.1.0.0/16 overlap"),
    ("10.0.0.0/8,10.0.0.0/8", "listed twice"),
    ("100.64.0.0/10", "tailnet's own range"),
    ("100.100.0.0/16", "tailnet's own range"),
    ("64.0.0.0/2", "tailnet's own range"),
    ("fd7a:115c:a1e0::/64", "tailnet's own range"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"),
    ("0.0.0.0/0", "go together"),
])  # fmt: skip
def test_bad_routes_refused_with_a_clear_message(text: str, needle: str) -> None:
    with pytest.raises(RouteError, match=needle.replace(".", r"\.").replace("(", r"\(")):
        calc_advertise_routes(text, exit_node=False)


def test_ten_thousand_prefixes_refused() -> None:
    nets = [f"10.{i // 256}.{i % 256}.0/24" for i in range(10_000)]
    limit = MAX_ADVERTISED_ROUTES
    with pytest.raises(RouteError, match=f"10000 routes advertised; at most {limit}"):
        calc_advertise_routes(",".join(nets), exit_node=False)
    assert len(parse_route_list(nets[:MAX_ADVERTISED_ROUTES])) == MAX_ADVERTISED_ROUTES


_v4 = st.builds(lambda a, n: ipaddress.ip_network(f"{ipaddress.IPv4Address(a)}/{n}", strict=False),
                st.integers(0, 2**32 - 1), st.integers(1, 32))  # fmt: skip


@given(st.lists(_v4, max_size=12))
def test_accepted_lists_never_overlap_or_touch_the_tailnet(nets: list[ipaddress.IPv4Network]):
    try:
        got = check_advertise_routes(nets)
    except RouteError:
        return
    for i, a in enumerate(got):
        assert not a.overlaps(ipaddress.ip_network("100.64.0.0/10"))
        assert all(not a.overlaps(b) for b in got[i + 1 :])


@given(st.text(max_size=40))
def test_any_text_parses_or_raises_route_error(text: str) -> None:
    msg = ""
    try:
        calc_advertise_routes(text, exit_node=False)
    except RouteError as exc:
        msg = str(exc) or "empty"
    assert "\n" not in msg


def test_netfilter_ruleset_masquerades_only_with_snat() -> None:
    on, off = ruleset("meshscale0", snat=True), ruleset("meshscale0", snat=False)
    assert "masquerade" in on and "masquerade" not in off
    assert on.startswith("table inet meshscale\ndelete table inet meshscale\n")  # atomic swap
    assert 'iifname "meshscale0"' in on and "0x40000" in on
    with pytest.raises(ValueError):
        ruleset('x"; flush ruleset; "', snat=True)
