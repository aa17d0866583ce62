"""Link impairments for lab hosts: random loss (nftables) and a rate limit (tc tbf).

The lab kernel may lack sch_netem, so loss is an nftables rule: `numgen random mod 10000 < N`
drops N in ten thousand packets leaving the interface. A rate limit uses the token bucket filter.
Both apply to egress only; impair both ends of a path for a symmetric effect.
"""

from __future__ import annotations

from meshscale.lab import netns

_LOSS_TABLE = "meshscale_impair"


def loss_ruleset(percent: float, iface: str) -> str:
    """nftables ruleset dropping `percent`% of packets leaving `iface` (0 removes the loss)."""
    if not 0.0 <= percent <= 100.0:
        raise ValueError(f"loss percent out of range: {percent}")
    per_10k = round(percent * 100)
    if per_10k == 0:
        rule = ""
    elif per_10k >= 10000:
        rule = f'oifname "{iface}" drop'  # numgen compares against 0..9999 only
    else:
        rule = f'oifname "{iface}" numgen random mod 10000 < {per_10k} drop'
    return f"""\
table inet {_LOSS_TABLE}
delete table inet {_LOSS_TABLE}
table inet {_LOSS_TABLE} {{
    chain egress {{
        type filter hook postrouting priority 100; policy accept;
        {rule}
    }}
}}
"""


def set_loss(ns: str, percent: float, iface: str = "eth0") -> None:
    netns.ns_nft(ns, loss_ruleset(percent, iface))


def set_rate(ns: str, rate: str | None, iface: str = "eth0") -> None:
    """Limit egress of `iface` to `rate` (tc syntax, e.g. "10mbit"); None removes the limit."""
    if rate is None:
        try:
            netns.run_cmd(["tc", "-n", ns, "qdisc", "del", "dev", iface, "root"])
        except netns.LabError:
            pass  # No qdisc was set.
        return
    netns.run_cmd(
        ["tc", "-n", ns, "qdisc", "replace", "dev", iface, "root",
         "tbf", "rate", rate, "burst", "64kb", "latency", "100ms"]
    )  # fmt: skip
