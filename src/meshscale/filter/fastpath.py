"""The packet filter on the data path, with a fast path for established TCP.

``meshscale.filter.Filter`` parses every packet in Python (about 10 us each). Most packets of a
bulk transfer are TCP segments that are not a pure SYN, which the filter accepts by its own
rule ("TCP: not a pure SYN -> accept") once the destination is one of our addresses. This
module applies exactly that rule from a few header bytes and hands everything else to the
filter. Outbound, only UDP and SCTP flows are recorded (for their replies), so TCP skips it.
"""

from __future__ import annotations

from collections.abc import MutableMapping, Set

from meshscale.packet.ip import IPPROTO_TCP as _TCP
from meshscale.packet.ip import TCP_ACK as _ACK
from meshscale.packet.ip import TCP_SYN as _SYN

from .filter import Filter


def _not_pure_syn(flags: int) -> bool:
    return not (flags & _SYN and not flags & _ACK)


def filter_inbound(
    f: Filter,
    local4: Set[bytes],
    local6: Set[bytes],
    packets: list[bytes],
    drops: MutableMapping[str, int] | None = None,
) -> list[bytes]:
    """The packets the filter accepts. ``local4``/``local6``: our addresses, packed.

    ``drops``, when given, counts each dropped packet under the filter's reason.
    """
    out: list[bytes] = []
    for p in packets:
        n = len(p)
        if n >= 40 and p[0] >> 4 == 4 and p[9] == _TCP and p[16:20] in local4:
            ihl = (p[0] & 0x0F) * 4
            # Unfragmented only: MF and the offset are zero.
            whole = ihl >= 20 and n >= ihl + 14 and not p[6] & 0x3F and not p[7]
            if whole and _not_pure_syn(p[ihl + 13]):
                out.append(p)
                continue
        elif (
            n >= 60 and p[0] >> 4 == 6 and p[6] == _TCP and p[24:40] in local6
            and _not_pure_syn(p[53])
        ):  # fmt: skip
            out.append(p)
            continue
        d = f.run_in(p)
        if d.accepted:
            out.append(p)
        elif drops is not None:
            drops[d.reason] = drops.get(d.reason, 0) + 1
    return out


def note_outbound(f: Filter, packets: list[bytes]) -> None:
    """Record outbound UDP/SCTP flows; TCP needs no state."""
    for p in packets:
        if len(p) >= 20 and (
            (p[0] >> 4 == 4 and p[9] == _TCP) or (p[0] >> 4 == 6 and p[6] == _TCP)
        ):
            continue
        f.run_out(p)
