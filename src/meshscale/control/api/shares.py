"""/api/v1 node sharing (issue #16 part 2, docs/protocol/policy.md §6): share a node with a
user of another tailnet, unshare it, list shares. meshscale's own operations (Headscale
has no sharing); the handlers are thin over State's Shares part."""

from __future__ import annotations

from typing import Any

from meshscale.control.api.routes import V1, Call, Route, _id, _r, _str, _tailnet, _user
from meshscale.control.api.serialize import ts, user_json
from meshscale.control.models import NodeID, Share, UserID


def share_json(share: Share, c: Call) -> dict[str, Any]:
    node = c.state.get_node(share.node_id)
    return {
        "nodeId": str(share.node_id),
        "node": node.given_name,
        "user": user_json(c.state.get_user(share.user_id)),
        "createdAt": ts(share.created_at),
    }


def _node(c: Call) -> NodeID:
    return NodeID(_id(c.params["nodeId"], "node id"))


def share_node(c: Call) -> dict[str, Any]:
    # "tailnet": the recipient's, when its name is used in several tailnets
    user = _user(c.state, _str(c.body, "user"), _tailnet(c, c.body))
    return {"share": share_json(c.state.share_node(_node(c), user.id), c)}


def unshare_node(c: Call) -> dict[str, Any]:
    user = _user(c.state, _str(c.body, "user"), _tailnet(c, c.body))
    c.state.unshare_node(_node(c), user.id)
    return {}


def list_shares(c: Call) -> dict[str, Any]:
    node = c.query.get("node")
    ref = c.query.get("user")
    nid = NodeID(_id(node, "node id")) if node else None
    uid: UserID | None = _user(c.state, ref).id if ref else None
    shares = c.state.list_shares(nid, uid)
    return {"shares": [share_json(s, c) for s in shares]}


SHARE_ROUTES: tuple[Route, ...] = (
    _r("POST", f"{V1}/node/{{nodeId}}/share", "shareNode",
       "Share a node with a user of another tailnet", "Nodes", share_node, "ShareOne",
       body={"user": "string", "tailnet": "string"}),
    _r("POST", f"{V1}/node/{{nodeId}}/unshare", "unshareNode",
       "Stop sharing a node with a user", "Nodes", unshare_node, "Empty",
       body={"user": "string", "tailnet": "string"}),
    _r("GET", f"{V1}/share", "listShares", "List node shares", "Nodes", list_shares,
       "ShareList", query=("node", "user")),
)  # fmt: skip
