"""The NAT and loss rulesets as text (no namespaces needed)."""

from __future__ import annotations

import pytest

from meshscale.lab.impair import loss_ruleset
from meshscale.lab.nat import NatKind, nat_ruleset


@pytest.mark.parametrize("kind", list(NatKind))
def test_every_kind_masquerades_and_drops_unsolicited_udp(kind: NatKind) -> None:
    rules = nat_ruleset(kind, "wan9")
    assert 'oifname "wan9" masquerade' in rules
    assert 'iifname "wan9" ct state new meta l4proto udp drop' in rules
    assert rules.startswith("table ip meshscale_nat\ndelete table ip meshscale_nat\n")


def test_only_hard_is_fully_random() -> None:
    assert "fully-random" in nat_ruleset(NatKind.HARD, "eth0")
    assert "fully-random" not in nat_ruleset(NatKind.EASY, "eth0")
    assert "fully-random" not in nat_ruleset(NatKind.UDP_BLOCK, "eth0")


def test_only_udp_block_drops_forwarded_udp() -> None:
    forward_drop = "hook forward priority filter; policy accept;\n        meta l4proto udp drop"
    assert forward_drop in nat_ruleset(NatKind.UDP_BLOCK, "eth0")
    assert forward_drop not in nat_ruleset(NatKind.EASY, "eth0")
    assert forward_drop not in nat_ruleset(NatKind.HARD, "eth0")


def test_loss_ruleset() -> None:
    assert "numgen random mod 10000 < 250 drop" in loss_ruleset(2.5, "eth0")
    assert 'oifname "eth0" drop' in loss_ruleset(100, "eth0")
    assert "drop" not in loss_ruleset(0, "eth0")
    with pytest.raises(ValueError):
        loss_ruleset(-1, "eth0")
