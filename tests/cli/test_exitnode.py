"""``meshscale exit-node list|suggest`` and the status marks for exit nodes."""

from __future__ import annotations

from typing import Any

from meshscale.cli.exitnode import exit_nodes, suggest
from meshscale.cli.status import connection


def peer(name: str, **kw: Any) -> dict[str, Any]:
    base = {"DNSName": f"{name}.ms.lab.", "TailscaleIPs": [f"100.64.0.{len(name)}"],
            "Online": True, "ExitNodeOption": True}  # fmt: skip
    return {**base, **kw}


def test_list_and_suggest_prefer_the_one_in_use_then_direct_then_by_name() -> None:
    st = {
        "Peer": {
            "1": peer("zed"),
            "2": peer("bob", CurAddr="203.0.113.5:41641"),
            "3": peer("amy", Online=False),
            "4": peer("cy", ExitNodeOption=False),
        }
    }
    assert [p["DNSName"] for p in exit_nodes(st)] == ["amy.ms.lab.", "bob.ms.lab.", "zed.ms.lab."]
    assert suggest(st)["DNSName"] == "bob.ms.lab."  # type: ignore[index]
    st["Peer"]["1"]["ExitNode"] = True
    assert suggest(st)["DNSName"] == "zed.ms.lab."  # type: ignore[index]
    assert suggest({"Peer": {"3": peer("amy", Online=False)}}) is None


def test_status_marks_offered_and_used_exit_nodes() -> None:
    assert connection(peer("a")) == "idle; offers exit node"
    assert connection(peer("a", ExitNode=True, Active=True)) == "active; exit node"
    assert connection(peer("a", ExitNodeOption=False)) == "idle"
