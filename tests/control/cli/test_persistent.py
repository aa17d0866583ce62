"""Headscale's persistent flags anywhere on the line, and the Go-encoding/json shape."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from meshscale.control.cli.common import hoist_persistent
from meshscale.control.cli.protoshape import go_json
from meshscale.control.main import build_parser


def test_flags_anywhere() -> None:
    p = build_parser()
    for argv in (
        ["nodes", "list", "-o", "json", "-c", "f.yaml"],
        ["-c", "f.yaml", "nodes", "-ojson", "list"],
        ["nodes", "list", "--output=json", "--config=f.yaml"],
    ):
        args = p.parse_args(hoist_persistent(argv))
        assert (args.command, args.verb, args.output, args.config) == (
            "nodes",
            "list",
            "json",
            "f.yaml",
        )
    args = p.parse_args(hoist_persistent(["nodes", "delete", "-i", "3", "--force"]))
    assert args.force and args.identifier == "3"
    assert hoist_persistent(["users", "create", "--", "-c"]) == ["users", "create", "--", "-c"]


@given(st.lists(st.text(max_size=8), max_size=8))
def test_hoist_keeps_every_word(argv: list[str]) -> None:
    out = hoist_persistent(argv)
    assert len(out) >= len([a for a in argv if a not in ("-c", "-o", "--config", "--output")])


def test_go_json_shape() -> None:
    rest = {
        "id": "7",
        "givenName": "laptop",
        "ipAddresses": ["100.64.0.1"],
        "online": False,
        "lastSeen": "2026-01-02T03:04:05.5Z",
        "expiry": None,
        "tags": [],
        "registerMethod": "REGISTER_METHOD_CLI",
        "user": {"id": "1", "name": "alice", "createdAt": "2026-01-01T00:00:00Z", "email": ""},
    }
    assert go_json(rest) == {
        "id": 7,
        "given_name": "laptop",
        "ip_addresses": ["100.64.0.1"],
        "last_seen": {"seconds": 1767323045, "nanos": 500_000_000},
        "register_method": 2,
        "user": {"id": 1, "name": "alice", "created_at": {"seconds": 1767225600}},
    }


def test_go_json_prints_tailnet_only_beyond_default() -> None:
    # A one-tailnet server's `-o json` stays exactly Headscale's shape; other tailnets are named.
    assert go_json({"id": "3", "name": "a", "tailnetId": "1"}) == {"id": 3, "name": "a"}
    assert go_json({"id": "3", "name": "b", "tailnetId": "2"}) == {
        "id": 3,
        "name": "b",
        "tailnet_id": 2,
    }
