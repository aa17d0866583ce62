"""State: the one owner of the control server's state (see :mod:`.state`)."""

from meshscale.control.state.keys import hash_secret, split_key
from meshscale.control.state.nodes import MAX_HOSTINFO_BYTES, MAX_ROUTES, parse_routes
from meshscale.control.state.options import DEFAULT_PREFIX_V4, DEFAULT_PREFIX_V6, StateOptions
from meshscale.control.state.reader import StateReader
from meshscale.control.state.registrations import MAX_PENDING_REGISTRATIONS
from meshscale.control.state.state import GCResult, State

__all__ = [
    "DEFAULT_PREFIX_V4",
    "DEFAULT_PREFIX_V6",
    "MAX_HOSTINFO_BYTES",
    "MAX_PENDING_REGISTRATIONS",
    "MAX_ROUTES",
    "GCResult",
    "State",
    "StateOptions",
    "StateReader",
    "hash_secret",
    "parse_routes",
    "split_key",
]
