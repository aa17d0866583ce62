"""/api/v1/tailnet: several tailnets on one server (issue #16 part 1). meshscale's own
operations (Headscale has one tailnet per server); thin over State's Tailnets part.

A tailnet is named in paths and in the ``tailnet`` parameter of other operations by its
name (or, in paths, its decimal id). Creating, renaming and deleting tailnets is for server
admins only (a tailnet-scoped API key gets 403, api/scope.py); listing shows a scoped key
its own tailnet.
"""

from __future__ import annotations

from typing import Any

from meshscale.control.api.routes import V1, Call, Route, _r, _str
from meshscale.control.api.serialize import ts
from meshscale.control.models import NotFound, Tailnet, TailnetID


def tailnet_json(t: Tailnet, c: Call) -> dict[str, Any]:
    return {
        "id": str(t.id),
        "name": t.name,
        "baseDomain": t.base_domain or "",
        "createdAt": ts(t.created_at),
        "users": len(c.state.list_users(t.id)),
        "nodes": len(c.state.list_nodes(tailnet=t.id)),
    }


def _ref(c: Call) -> Tailnet:
    """The tailnet of the ``{tailnet}`` path segment: a name, else a decimal id."""
    ref = c.params["tailnet"]
    try:
        return c.state.get_tailnet_by_name(ref)
    except NotFound:
        if ref.isascii() and ref.isdigit() and len(ref) <= 19:
            return c.state.get_tailnet(TailnetID(int(ref)))
        raise


def list_tailnets(c: Call) -> dict[str, Any]:
    return {"tailnets": [tailnet_json(t, c) for t in c.state.list_tailnets()]}


def create_tailnet(c: Call) -> dict[str, Any]:
    return {"tailnet": tailnet_json(c.state.create_tailnet(_str(c.body, "name")), c)}


def rename_tailnet(c: Call) -> dict[str, Any]:
    t = c.state.rename_tailnet(_ref(c).id, c.params["newName"])
    return {"tailnet": tailnet_json(t, c)}


def delete_tailnet(c: Call) -> dict[str, Any]:
    c.state.delete_tailnet(_ref(c).id)
    return {}


TAILNET_ROUTES: tuple[Route, ...] = (
    _r("GET", f"{V1}/tailnet", "listTailnets", "List tailnets", "Tailnets", list_tailnets,
       "TailnetList"),
    _r("POST", f"{V1}/tailnet", "createTailnet", "Create a tailnet", "Tailnets",
       create_tailnet, "TailnetOne", body={"name": "string"}),
    _r("POST", f"{V1}/tailnet/{{tailnet}}/rename/{{newName}}", "renameTailnet",
       "Rename a tailnet", "Tailnets", rename_tailnet, "TailnetOne"),
    _r("DELETE", f"{V1}/tailnet/{{tailnet}}", "deleteTailnet",
       "Delete an empty tailnet (refused while it has users)", "Tailnets", delete_tailnet,
       "Empty"),
)  # fmt: skip
