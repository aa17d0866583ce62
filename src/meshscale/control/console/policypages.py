"""The access-controls editor and the audit log pages.

The editor checks as the admin types (``POST /admin/api/policy/check`` -> the API's
``checkPolicy``, which also runs the policy's ``tests``), checks again before saving (an
invalid policy is refused with its message and the text kept in the editor), shows the
version history with a diff against the policy in force, rolls back, and answers "can A
reach B on port P?" (``checkReach``).
"""

from __future__ import annotations

import difflib
import json
from typing import TYPE_CHECKING, Any

from meshscale.control.console import web
from meshscale.control.console.app import PREFIX, Ctx
from meshscale.control.models import StateError
from meshscale.io.http import Response

if TYPE_CHECKING:
    from meshscale.control.console.app import Console

POLICY = f"{PREFIX}/policy"


def diff_lines(old: str, new: str, old_name: str, new_name: str) -> list[tuple[str, str]]:
    """(kind, line) pairs of a unified diff; kind is add, del, hunk or ctx."""
    out = []
    for line in difflib.unified_diff(old.splitlines(), new.splitlines(), old_name, new_name,
                                     lineterm="", n=2):  # fmt: skip
        kind = {"+": "add", "-": "del", "@": "hunk"}.get(line[:1], "ctx")
        out.append((kind, line))
    return out


def _check_message(result: dict[str, Any]) -> str:
    errors = result.get("errors") or []
    return "; ".join(str(e.get("message")) for e in errors) or "invalid policy"


def register(c: Console) -> None:
    def page(ctx: Ctx, text: str | None = None, error: str = "", status: int = 200) -> Response:
        current = c.invoke(ctx, "getPolicy")
        history = c.invoke(ctx, "listPolicyVersions", query={"limit": "50"})["versions"]
        q = ctx.req.query
        diff: list[tuple[str, str]] = []
        want = q.get("diff", "")
        if want.isascii() and want.isdigit():
            old = next((v for v in history if str(v["version"]) == want), None)
            if old is not None:
                diff = diff_lines(old["policy"], current["policy"], f"version {want}",
                                  "in force")  # fmt: skip
        reach: dict[str, Any] | None = None
        if q.get("src") and q.get("dst") and q.get("port"):
            try:
                reach = c.invoke(ctx, "checkReach", query={
                    "src": q["src"], "dst": q["dst"], "port": q["port"],
                    "proto": q.get("proto", "tcp")})  # fmt: skip
            except StateError as exc:
                reach = {"error": str(exc)}
        names = sorted(n.given_name for n in c.state.list_nodes())[:1000]
        return c.render(
            ctx, "policy.html", status, title="Access controls",
            text=current["policy"] if text is None else text, current=current, error=error,
            history=history, diff=diff, diff_version=want, reach=reach, query=q,
            machines=names, writable=c.settings.policy_writable,
        )  # fmt: skip

    async def policy_page(ctx: Ctx) -> Response:
        return page(ctx)

    async def save(ctx: Ctx) -> Response:
        text = ctx.field("policy").replace("\r\n", "\n")  # browsers send textareas as CRLF
        try:
            checked = c.invoke(ctx, "checkPolicy", body={"policy": text})
            if not checked.get("valid"):
                return page(ctx, text, _check_message(checked), 400)
            result = c.invoke(ctx, "setPolicy", body={"policy": text})
        except StateError as exc:
            return page(ctx, text, str(exc), 400)
        ctx.session.flash.append(("ok", f"policy saved (version {result.get('version')})"))
        return web.redirect(POLICY)

    async def rollback(ctx: Ctx) -> Response:
        version = ctx.field("version")
        if not (version.isascii() and version.isdigit()):
            return c.back(ctx, POLICY, "rollback: want a version number")
        return c.act(ctx, "rollbackPolicy", f"rolled back to version {version}", POLICY,
                     body={"version": int(version)})[0]  # fmt: skip

    async def check(ctx: Ctx) -> Response:
        text = web.json_body(ctx.req).get("policy")
        if not isinstance(text, str):
            body = {"ok": False, "message": 'want {"policy": text}'}
        else:
            try:
                result = c.invoke(ctx, "checkPolicy", body={"policy": text})
                valid = bool(result.get("valid"))
                message = "" if valid else _check_message(result)
                body = {"ok": valid, "warnings": result.get("warnings") or [], "message": message}
            except StateError as exc:
                body = {"ok": False, "message": str(exc)}
        return Response(200, json.dumps(body).encode(), [], "application/json")

    async def audit_page(ctx: Ctx) -> Response:
        q = ctx.req.query
        query = {"limit": "100"}
        if q.get("before", "").isascii() and q.get("before", "").isdigit():
            query["before"] = q["before"]
        if q.get("action"):
            query["action"] = q["action"][:100]
        entries = c.invoke(ctx, "listAudit", query=query)["entries"]
        for e in entries:
            e["detail_text"] = json.dumps(e["detail"], sort_keys=True)[:300]
        older = entries[-1]["id"] if len(entries) == 100 else ""
        return c.render(ctx, "audit.html", title="Audit log", entries=entries, older=older,
                        action=q.get("action", ""))  # fmt: skip

    c.get_pages[POLICY] = policy_page
    c.get_pages[f"{PREFIX}/audit"] = audit_page
    c.post_pages[POLICY] = save
    c.post_pages[f"{POLICY}/rollback"] = rollback
    c.json_pages[f"{PREFIX}/api/policy/check"] = check
