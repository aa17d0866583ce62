"""meshscale.policy: the access policy seam of the control server (a sans-IO core).

:class:`PolicyManager` is what the control server asks (a node's packet filter, the peers
it may see, whether it may carry a tag or have a route approved); :class:`AllowAll` is the
policy of a server without one.
"""

from meshscale.policy.allowall import AllowAll
from meshscale.policy.manager import (
    EVERYONE,
    NO_CHANGE,
    PolicyChange,
    PolicyError,
    PolicyManager,
    PolicyNode,
    PolicyUser,
)

__all__ = [
    "EVERYONE",
    "NO_CHANGE",
    "AllowAll",
    "PolicyChange",
    "PolicyError",
    "PolicyManager",
    "PolicyNode",
    "PolicyUser",
]
