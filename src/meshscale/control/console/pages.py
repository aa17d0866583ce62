"""The console's GET pages: they read and render, and change nothing."""

from __future__ import annotations

import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

from meshscale.control.api.serialize import parse_ts
from meshscale.control.console import machines
from meshscale.control.console.app import PREFIX, Ctx
from meshscale.control.models import NodeID, StateError
from meshscale.io.http import Response

if TYPE_CHECKING:
    from meshscale.control.console.app import Console

NAV = (
    ("machines", "Machines"), ("users", "Users"), ("keys", "Pre-auth keys"),
    ("apikeys", "API keys"), ("policy", "Access controls"), ("dns", "DNS"), ("audit", "Logs"),
)  # fmt: skip


def ago(when: datetime | None, now: datetime) -> str:
    if when is None:
        return "never"
    s = int((now - when).total_seconds())
    if s < 0:
        return "in " + ago(now, when).removesuffix(" ago")
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s // size}{unit} ago"
    return f"{s}s ago"


def stamp(when: datetime | None) -> str:
    return when.strftime("%Y-%m-%d %H:%M UTC") if when is not None else "never"


def register(c: Console) -> None:
    c.env.globals["nav"] = NAV
    c.env.globals["prefix"] = PREFIX

    index = machines.SearchIndex()

    def fqdn(name: str) -> str:
        base = c.settings.base_domain
        return f"{name}.{base}" if base else name

    def row(n: Any, users: dict[int, Any], now: datetime) -> dict[str, Any]:
        hi = n.hostinfo
        return {
            "id": int(n.id), "name": n.given_name, "hostname": n.hostname,
            "fqdn": fqdn(n.given_name),
            "addresses": [str(a) for a in n.addresses()], "owner": machines.owner_of(n, users),
            "tagged": bool(n.tags), "os": str(hi.get("OS") or ""),
            "version": str(hi.get("IPNVersion") or ""), "online": n.online,
            "last_seen": ago(n.last_seen, now), "badges": machines.badges(n, now),
            "expiry": "disabled" if n.expiry is None else stamp(n.expiry),
            "routes": [str(r) for r in n.announced_routes()],
            "approved": [str(r) for r in n.approved_routes],
        }  # fmt: skip

    async def machines_page(ctx: Ctx) -> Response:
        t0 = time.perf_counter()
        st = c.state
        now = st.clock()
        query = machines.Query.parse(ctx.req.query)
        users = {int(u.id): u for u in st.list_users()}
        page = machines.select(st.list_nodes(), users, query, now, index)  # type: ignore[arg-type]
        regs = [{"id": r.id, "hostname": str(r.hostinfo.get("Hostname") or ""),
                 "os": str(r.hostinfo.get("OS") or ""), "machine_key": r.machine_key.text()[:20],
                 "expires": stamp(r.expires_at)} for r in st.list_registrations()]  # fmt: skip
        return c.render(
            ctx, "machines.html", title="Machines", q=query,
            rows=[row(n, users, now) for n in page.nodes], page=page, filters=machines.FILTERS,
            sorts=machines.SORTS, registrations=regs,
            users=sorted(u.name for u in users.values()) if regs else [],
            server_ms=f"{(time.perf_counter() - t0) * 1000:.1f}",
        )  # fmt: skip

    async def machine_page(ctx: Ctx) -> Response:
        nid = int(ctx.req.path.rstrip("/").rsplit("/", 1)[-1])
        st = c.state
        try:
            node = st.get_node(NodeID(nid))
        except (StateError, ValueError):
            return c.render(ctx, "error.html", 404, title="not found",
                            message=f"There is no machine {nid}.")  # fmt: skip
        now = st.clock()
        users = {int(u.id): u for u in st.list_users()}
        info = row(node, users, now)  # type: ignore[arg-type]
        routes = sorted(set(info["routes"]) | set(info["approved"]))
        return c.render(
            ctx, "machine.html", title=node.given_name, m=info, routes=routes,
            tags=", ".join(node.tags), node_key=node.node_key.text()[:24],
            machine_key=node.machine_key.text()[:24], endpoints=list(node.endpoints),
            created=stamp(node.created_at), derp=_home_derp(node.hostinfo),
            exit_routes=sorted(str(r) for r in machines.EXIT_ROUTES),
        )  # fmt: skip

    async def users_page(ctx: Ctx) -> Response:
        users = c.invoke(ctx, "listUsers")["users"]
        counts: dict[int, int] = {}
        for n in c.state.list_nodes():
            counts[int(n.user_id)] = counts.get(int(n.user_id), 0) + (0 if n.tags else 1)
        for u in users:
            u["nodes"] = counts.get(int(u["id"]), 0)
        return c.render(ctx, "users.html", title="Users", users=users)

    async def keys_page(ctx: Ctx) -> Response:
        keys = c.invoke(ctx, "listPreAuthKeys")["preAuthKeys"]
        now = c.state.clock()
        for k in keys:
            exp = k["expiration"]
            k["expired"] = bool(exp) and parse_ts(exp) <= now
        users = [u["name"] for u in c.invoke(ctx, "listUsers")["users"]]
        return c.render(ctx, "keys.html", title="Pre-auth keys", keys=keys, users=users)

    async def apikeys_page(ctx: Ctx) -> Response:
        keys = c.invoke(ctx, "listApiKeys")["apiKeys"]
        now = c.state.clock()
        for k in keys:
            exp = k["expiration"]
            k["expired"] = bool(exp) and parse_ts(exp) <= now
        return c.render(ctx, "apikeys.html", title="API keys", keys=keys)

    async def dns_page(ctx: Ctx) -> Response:
        return c.render(ctx, "dns.html", title="DNS", dns=c.settings.dns,
                        preview=c.settings.dns_preview)  # fmt: skip

    async def logout(ctx: Ctx) -> Response:
        return c.logout(ctx)

    c.get_pages.update({
        f"{PREFIX}/machines": machines_page, f"{PREFIX}/machines/{{id}}": machine_page,
        f"{PREFIX}/users": users_page, f"{PREFIX}/keys": keys_page,
        f"{PREFIX}/apikeys": apikeys_page, f"{PREFIX}/dns": dns_page,
    })  # fmt: skip
    c.post_pages[f"{PREFIX}/logout"] = logout


def _home_derp(hostinfo: dict[str, Any]) -> str:
    net = hostinfo.get("NetInfo")
    if isinstance(net, dict) and net.get("PreferredDERP"):
        return f"region {net['PreferredDERP']}"
    return "unknown"
