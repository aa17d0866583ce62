"""The console's POST actions: each one /api/v1 operation, then a redirect (PRG).

A form names its action by its URL; ids come from the URL (digits only, checked by the
router) and values from the form. Nothing from a form is put into a path unchecked: the
API's own parameter checks run (rename validates the label, tags the tag syntax).
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

from meshscale.control.api.serialize import ts
from meshscale.control.console.app import PREFIX, Ctx
from meshscale.io.http import Response

if TYPE_CHECKING:
    from meshscale.control.console.app import Console


def _id(ctx: Ctx, index: int = -2) -> str:
    """The numeric id in ``/admin/<thing>/<id>/<action>`` (the router checked digits)."""
    return ctx.req.path.rstrip("/").split("/")[index]


def _split(text: str) -> list[str]:
    return [t for t in (p.strip() for p in text.replace(",", " ").split()) if t]


def register(c: Console) -> None:
    machines = f"{PREFIX}/machines"

    def back(ctx: Ctx) -> str:
        return f"{machines}/{_id(ctx)}"

    async def rename(ctx: Ctx) -> Response:
        name = ctx.field("name").strip()
        if not name or "/" in name:
            return c.back(ctx, back(ctx), "a machine name is one DNS label")
        return c.act(ctx, "renameNode", f"renamed to {name}", back(ctx),
                     {"nodeId": _id(ctx), "newName": name})[0]  # fmt: skip

    async def tags(ctx: Ctx) -> Response:
        return c.act(ctx, "setTags", "tags saved", back(ctx), {"nodeId": _id(ctx)},
                     body={"tags": _split(ctx.field("tags"))})[0]  # fmt: skip

    async def routes(ctx: Ctx) -> Response:
        return c.act(ctx, "setApprovedRoutes", "route approvals saved", back(ctx),
                     {"nodeId": _id(ctx)}, body={"routes": ctx.fields("route")})[0]  # fmt: skip

    async def expire(ctx: Ctx) -> Response:
        return c.act(ctx, "expireNode", "key expired", back(ctx), {"nodeId": _id(ctx)})[0]

    async def no_expiry(ctx: Ctx) -> Response:
        return c.act(ctx, "expireNode", "key expiry disabled", back(ctx), {"nodeId": _id(ctx)},
                     body={"disableExpiry": True})[0]  # fmt: skip

    async def delete(ctx: Ctx) -> Response:
        return c.act(ctx, "deleteNode", "machine removed", machines, {"nodeId": _id(ctx)})[0]

    async def approve_registration(ctx: Ctx) -> Response:
        return c.act(ctx, "registerNode", "machine approved", machines,
                     query={"user": ctx.field("user"), "key": ctx.field("id")})[0]  # fmt: skip

    async def reject_registration(ctx: Ctx) -> Response:
        return c.act(ctx, "rejectRegistration", "registration rejected", machines,
                     query={"key": ctx.field("id")})[0]  # fmt: skip

    users = f"{PREFIX}/users"

    async def create_user(ctx: Ctx) -> Response:
        return c.act(ctx, "createUser", "user created", users,
                     body={"name": ctx.field("name").strip(),
                           "displayName": ctx.field("display_name").strip(),
                           "email": ctx.field("email").strip()})[0]  # fmt: skip

    async def rename_user(ctx: Ctx) -> Response:
        name = ctx.field("name").strip()
        if not name or "/" in name:
            return c.back(ctx, users, "invalid user name")
        return c.act(ctx, "renameUser", f"renamed to {name}", users,
                     {"oldId": _id(ctx), "newName": name})[0]  # fmt: skip

    async def delete_user(ctx: Ctx) -> Response:
        return c.act(ctx, "deleteUser", "user deleted", users, {"id": _id(ctx)})[0]

    keys = f"{PREFIX}/keys"

    async def create_key(ctx: Ctx) -> Response:
        hours = ctx.field("hours", "1").strip() or "1"
        body: dict[str, object] = {
            "user": ctx.field("user"), "reusable": ctx.field("reusable") == "on",
            "ephemeral": ctx.field("ephemeral") == "on", "aclTags": _split(ctx.field("tags")),
        }  # fmt: skip
        if not (hours.isascii() and hours.isdigit()) or not 0 < int(hours) <= 24 * 365:
            return c.back(ctx, keys, "expiry: want 1 to 8760 hours")
        body["expiration"] = ts(c.state.clock() + timedelta(hours=int(hours)))
        resp, result = c.act(ctx, "createPreAuthKey", "pre-auth key created", keys, body=body)
        if result is not None:
            ctx.session.secret_once = str(result["preAuthKey"]["key"])
        return resp

    async def expire_key(ctx: Ctx) -> Response:
        return c.act(ctx, "expirePreAuthKey", "pre-auth key expired", keys,
                     body={"id": _id(ctx)})[0]  # fmt: skip

    apikeys = f"{PREFIX}/apikeys"

    async def create_apikey(ctx: Ctx) -> Response:
        days = ctx.field("days", "90").strip()
        if not (days.isascii() and days.isdigit()) or not 0 < int(days) <= 3650:
            return c.back(ctx, apikeys, "expiry: want 1 to 3650 days")
        exp = ts(c.state.clock() + timedelta(days=int(days)))
        resp, result = c.act(ctx, "createApiKey", "API key created", apikeys,
                             body={"expiration": exp})  # fmt: skip
        if result is not None:
            ctx.session.secret_once = str(result["apiKey"])
        return resp

    async def expire_apikey(ctx: Ctx) -> Response:
        return c.act(ctx, "expireApiKey", "API key expired", apikeys, body={"id": _id(ctx)})[0]

    c.post_pages.update({
        f"{machines}/{{id}}/rename": rename, f"{machines}/{{id}}/tags": tags,
        f"{machines}/{{id}}/routes": routes, f"{machines}/{{id}}/expire": expire,
        f"{machines}/{{id}}/noexpiry": no_expiry, f"{machines}/{{id}}/delete": delete,
        f"{PREFIX}/registrations/approve": approve_registration,
        f"{PREFIX}/registrations/reject": reject_registration,
        users: create_user, f"{users}/{{id}}/rename": rename_user,
        f"{users}/{{id}}/delete": delete_user,
        keys: create_key, f"{keys}/{{id}}/expire": expire_key,
        apikeys: create_apikey, f"{apikeys}/{{id}}/expire": expire_apikey,
    })  # fmt: skip
