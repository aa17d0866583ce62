"""meshscale.policy: the access policy seam of the control server (a sans-IO core).

:class:`PolicyManager` is what the control server asks (a node's packet filter, the peers
it may see, whether it may carry a tag or have a route approved); :class:`AllowAll` is the
policy of a server without one (Headscale's ``SrcIPs:["*"]`` form).

:class:`PolicyEngine` is the policy-backed manager (Tailscale/Headscale policy format,
docs/protocol/policy.md). Use it like this::

    engine = PolicyEngine()          # no policy yet: allow all (SaaS form, §2.1)
    engine.set_users(users)          # PolicyUser objects
    engine.set_nodes(nodes)          # PolicyNode objects
    change = engine.set_policy(text) # HuJSON; PolicyError (old policy kept) if invalid
                                     # or if a `tests` entry fails
    engine.update_node(node)         # → PolicyChange: nodes whose *filter* changed
    engine.remove_node(node_id)      #   (who sees the node itself: ask can_see)
    engine.filter_for(node)          # list[FilterRule] (shared rules: do not modify)
    engine.can_see(viewer, peer)     # traffic may flow either way
    engine.may_tag(node, "tag:db")   # tagOwners (users, groups, tag-owns-tag)
    engine.may_approve_route(node, prefix)  # autoApprovers (routes; exitNode for /0)
    engine.reachable_routes(viewer, router)  # router's routes in viewer's AllowedIPs (§5.3)
    engine.cap_map_for(node)         # nodeAttrs → {attr: None} for the node's self CapMap
    engine.policy.randomize_client_port  # the validated Policy (model.Policy)
    engine.warnings                  # what the policy asks for but is not enforced (ssh)

:func:`check_policy` validates a text (and its tests, against given users/nodes) without
applying it: the backend of ``policy check -f``. Every refusal is a :class:`PolicyError`
whose message names the value and its ``line:column``.
"""

from meshscale.policy.allowall import AllowAll
from meshscale.policy.engine import PolicyEngine, check_policy
from meshscale.policy.manager import (
    EVERYONE,
    NO_CHANGE,
    PolicyChange,
    PolicyError,
    PolicyManager,
    PolicyNode,
    PolicyUser,
)
from meshscale.policy.parse import parse_policy

__all__ = [
    "EVERYONE",
    "NO_CHANGE",
    "AllowAll",
    "PolicyChange",
    "PolicyEngine",
    "PolicyError",
    "PolicyManager",
    "PolicyNode",
    "PolicyUser",
    "check_policy",
    "parse_policy",
]
