"""lab/delay.py without namespaces: packet family detection and argument checks."""

from __future__ import annotations

import pytest

from meshscale.lab.delay import ETH_P_IP, ETH_P_IPV6, ethertype, main


@pytest.mark.parametrize(
    ("pkt", "want"),
    [
        (b"\x45" + bytes(19), ETH_P_IP),
        (b"\x60" + bytes(39), ETH_P_IPV6),
        (b"", None),
        (b"\x10", None),
    ],
)
def test_ethertype(pkt: bytes, want: int | None) -> None:
    assert ethertype(pkt) == want


@pytest.mark.parametrize(
    "args",
    [
        ["--mac", "zz:00:00:00:00:00", "--ms", "40"],
        ["--mac", "02:00:00:00:00", "--ms", "40"],
        ["--mac", "02:00:00:00:00:01", "--ms", "0"],
        ["--mac", "02:00:00:00:00:01", "--ms", "60000"],
    ],
)
def test_bad_arguments_are_refused(args: list[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["--tun", "dly0", "--dev", "eth0", *args])
    assert e.value.code == 2
