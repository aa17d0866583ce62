"""meshscale.filter: the packet filter (tailscale wgengine/filter). Performs no I/O.

rules     tailcfg.FilterRule -> compiled matches (FilterError on bad rules)
filter    Filter: the inbound matcher and the outbound flow cache
fastpath  filter_inbound / note_outbound: batches on the data path, established TCP
          decided from a few header bytes
"""

from .fastpath import filter_inbound, note_outbound
from .filter import FLOW_CACHE_SIZE, CapTest, Decision, Filter, Response
from .rules import FilterError, Match, compile_rules

__all__ = [
    "FLOW_CACHE_SIZE",
    "CapTest",
    "Decision",
    "Filter",
    "FilterError",
    "Match",
    "Response",
    "compile_rules",
    "filter_inbound",
    "note_outbound",
]
