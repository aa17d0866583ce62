"""The admin console at ``/admin``: routing, sign-in, sessions, CSRF, rendering.

Usage (what ``meshscale-control serve`` does)::

    console = build(state, api, ConsoleSettings(server_url=cfg.server_url, ...))
    console.mount(router)        # or console_for(cfg, state, api, dns_config)

Every change goes through :meth:`meshscale.control.api.API.invoke`: the same handlers,
checks and audit records as ``/api/v1``, so the console can do nothing the REST API and
the admin CLI cannot. Reads of large lists (machines) go to State directly, one page at a
time (:mod:`.machines`).

Request rules: without a live session every page answers 303 to the sign-in page and every
``/admin/api/...`` JSON route 401; a state-changing request must be a POST carrying the
session's CSRF token and pass the same-origin check (:func:`.web.same_origin`); GETs have
no effects. Sign-in rotates the session id; logout deletes the session server-side.
"""

from __future__ import annotations

import logging
import mimetypes
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import jinja2

from meshscale.control.api import API
from meshscale.control.console import web
from meshscale.control.console.session import LoginLimiter, Session, SessionStore, csrf_ok
from meshscale.control.console.session import token as new_token
from meshscale.control.models import APIKeyError, StateError
from meshscale.control.state import State
from meshscale.io.http import Request, Response, Router

log = logging.getLogger(__name__)

PREFIX = "/admin"
SESSION_COOKIE = "meshscale_console"
LOGIN_COOKIE = "meshscale_console_login"

Page = Callable[["Ctx"], Awaitable[Response]]


@dataclass(slots=True)
class Ctx:
    """One console request: the request, its session, its form and where it came from."""

    req: Request
    session: Session
    form: dict[str, list[str]] = field(default_factory=dict)

    @property
    def source(self) -> str:
        return self.req.client[0] if self.req.client else "unknown"

    def field(self, name: str, default: str = "") -> str:
        values = self.form.get(name)
        return values[-1] if values else default

    def fields(self, name: str) -> list[str]:
        return list(self.form.get(name, []))


@dataclass(frozen=True, slots=True)
class ConsoleSettings:
    """What the console shows or decides from the server configuration."""

    server_url: str
    base_domain: str = ""
    policy_writable: bool = True
    oidc_enabled: bool = False
    dns: dict[str, Any] = field(default_factory=dict)  # the DNS settings view
    dns_preview: str = ""  # the DNSConfig nodes get, as JSON
    facts: tuple[tuple[str, str], ...] = ()  # the read-only settings page: (name, value)

    @property
    def https(self) -> bool:
        return self.server_url.startswith("https://")


class Console:
    """The /admin dispatcher; :func:`meshscale.control.console.build` adds the pages
    (``get_pages``, ``post_pages``, ``json_pages``) and ``mount(router)`` serves them."""

    def __init__(
        self, state: State, api: API, settings: ConsoleSettings, *,
        sessions: SessionStore | None = None, limiter: LoginLimiter | None = None,
        oidc: Any = None,
    ) -> None:  # fmt: skip
        self.state = state
        self.api = api
        self.settings = settings
        self.sessions = sessions if sessions is not None else SessionStore()
        self.limiter = limiter if limiter is not None else LoginLimiter()
        self.oidc = oidc  # console OIDC sign-in (.oidc.ConsoleOIDC) when configured
        self.https = settings.https
        self.cookie = web.cookie_name(SESSION_COOKIE, self.https)
        self.login_cookie = web.cookie_name(LOGIN_COOKIE, self.https)
        self.env = jinja2.Environment(
            loader=jinja2.PackageLoader("meshscale.control.console", "templates"),
            autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True,
            lstrip_blocks=True,
        )  # fmt: skip
        self.env.globals["url"] = web.url
        self._static = self._load_static()
        self.get_pages: dict[str, Page] = {}
        self.post_pages: dict[str, Page] = {}
        self.json_pages: dict[str, Page] = {}  # /admin/api/...: session + CSRF header

    def mount(self, router: Router) -> None:
        router.add("*", PREFIX, self.handle)
        router.add_prefix("*", PREFIX + "/", self.handle)

    @staticmethod
    def _load_static() -> dict[str, tuple[bytes, str]]:
        folder = resources.files("meshscale.control.console").joinpath("static")
        out: dict[str, tuple[bytes, str]] = {}
        for item in folder.iterdir():
            if item.is_file():
                ctype = mimetypes.guess_type(item.name)[0] or "application/octet-stream"
                if ctype.startswith("text/") or ctype.endswith("javascript"):
                    ctype += "; charset=utf-8"
                out[item.name] = (item.read_bytes(), ctype)
        return out

    # ---- dispatch ----------------------------------------------------------------------

    async def handle(self, req: Request) -> Response:
        try:
            resp = await self._dispatch(req)
        except Exception:
            log.exception("console: %s %s failed", req.method, req.path)
            resp = Response.text(500, "internal error\n")
        resp.headers.extend(web.security_headers(self.https))
        if not any(k.lower() == "cache-control" for k, _ in resp.headers):
            resp.headers.append(("Cache-Control", "no-store"))
        return resp

    async def _dispatch(self, req: Request) -> Response:
        path = req.path.rstrip("/") or "/"
        if path == PREFIX:
            return web.redirect(PREFIX + "/machines")
        if path.startswith(PREFIX + "/static/"):
            return self._serve_static(path.removeprefix(PREFIX + "/static/"))
        if path == PREFIX + "/login":
            if req.method == "POST":
                return await self.login(req)
            return self.login_page(req)
        if self.oidc is not None and path.startswith(PREFIX + "/oidc/"):
            response: Response = await self.oidc.handle(self, req, path)
            return response
        session = self.current(req)
        is_json = path.startswith(PREFIX + "/api/")
        if session is None:
            if is_json:
                return Response(401, b'{"message":"sign in first"}', [], "application/json")
            if req.method in ("GET", "HEAD"):
                return web.redirect(web.url(PREFIX + "/login", {"next": req.path}))
            return web.redirect(PREFIX + "/login")
        if req.method in ("GET", "HEAD"):
            page = self.get_pages.get(path) or self._pattern(self.get_pages, path)
            if page is None or is_json:
                return self.render(Ctx(req, session), "error.html", status=404,
                                   title="not found", message="No such page.")  # fmt: skip
            return await page(Ctx(req, session))
        if req.method != "POST":
            return Response.text(405, "method not allowed\n", [("Allow", "GET, POST")])
        ctx = Ctx(req, session, {} if is_json else web.form(req))
        sent = req.headers.get("x-csrf-token") if is_json else ctx.field("csrf")
        if not web.same_origin(req, self.settings.server_url) or not csrf_ok(session, sent):
            return Response.text(403, "refused: missing or wrong CSRF token, or cross-site\n")
        table = self.json_pages if is_json else self.post_pages
        page = table.get(path) or self._pattern(table, path)
        if page is None:
            return Response.text(404, "not found\n")
        return await page(ctx)

    @staticmethod
    def _pattern(table: dict[str, Page], path: str) -> Page | None:
        """A page registered as ``/admin/machines/{id}`` for ``/admin/machines/12``."""
        parts = path.split("/")
        for pattern, page in table.items():
            want = pattern.split("/")
            if len(want) == len(parts) and all(
                w == p or (w == "{id}" and p.isascii() and p.isdigit() and len(p) < 19)
                for w, p in zip(want, parts, strict=True)
            ):
                return page
        return None

    def _serve_static(self, name: str) -> Response:
        found = self._static.get(name)
        if found is None:
            return Response.text(404, "not found\n")
        body, ctype = found
        return Response(200, body, [("Cache-Control", "max-age=3600")], ctype)

    # ---- sessions ----------------------------------------------------------------------

    def current(self, req: Request) -> Session | None:
        sess = self.sessions.get(web.cookies(req).get(self.cookie))
        if sess is None or sess.api_key_id is None:
            return sess
        try:  # an expired or deleted API key ends the sessions it opened
            key = self.state.get_api_key(sess.api_key_id)  # type: ignore[arg-type]
            if key.is_expired(self.state.clock()):
                raise APIKeyError("expired")
        except (StateError, ValueError):
            self.sessions.drop_api_key(sess.api_key_id)
            return None
        return sess

    def start_session(self, req: Request, actor: str, api_key_id: int | None,
                      next_path: str) -> Response:  # fmt: skip
        """Rotate: any session the browser had is deleted, and a new id is set."""
        self.sessions.delete(web.cookies(req).get(self.cookie))
        sess = self.sessions.create(actor, api_key_id)
        log.info("console: %s signed in from %s", actor, req.client[0] if req.client else "?")
        return web.redirect(web.safe_next(next_path), [
            ("Set-Cookie", web.set_cookie(self.cookie, sess.id, https=self.https)),
            ("Set-Cookie", web.set_cookie(self.login_cookie, "", https=self.https, max_age=0)),
        ])  # fmt: skip

    def login_page(self, req: Request, error: str = "", status: int = 200) -> Response:
        login_token = new_token(self.sessions.rand)
        body = self.env.get_template("login.html").render(
            error=error, login_token=login_token, next=web.safe_next(req.query.get("next")),
            oidc=self.oidc is not None,
        )  # fmt: skip
        cookie = web.set_cookie(self.login_cookie, login_token, https=self.https, max_age=600)
        return Response(status, body.encode(), [("Set-Cookie", cookie)],
                        "text/html; charset=utf-8")  # fmt: skip

    async def login(self, req: Request) -> Response:
        f = web.form(req)

        def one(name: str) -> str:
            return (f.get(name) or [""])[-1]

        expected = web.cookies(req).get(self.login_cookie, "")
        if (not web.same_origin(req, self.settings.server_url) or not expected
                or not csrf_ok(Session("", expected, "", None, self.state.clock(),
                                       self.state.clock()), one("login_token"))):  # fmt: skip
            return self.login_page(req, "The sign-in form expired; try again.", 403)
        source = req.client[0] if req.client else "unknown"
        if not self.limiter.allow(source):
            return self.login_page(req, "Too many attempts; wait a minute.", 429)
        secret = one("api_key").strip()
        try:
            key = self.state.verify_api_key(secret)
        except (APIKeyError, ValueError):
            log.info("console: refused sign-in from %s", source)
            return self.login_page(req, "That API key is not valid.", 401)
        if key.tailnet_id is not None:  # the console acts as a server admin
            log.info("console: refused a tailnet-scoped API key from %s", source)
            return self.login_page(
                req, "That API key is scoped to one tailnet; the console needs a server "
                "admin key.", 403)  # fmt: skip
        return self.start_session(req, f"apikey:{key.prefix}", int(key.id), one("next"))

    # ---- helpers for pages -------------------------------------------------------------

    def render(self, ctx: Ctx, template: str, status: int = 200, **values: Any) -> Response:
        flash, ctx.session.flash = ctx.session.flash, []
        secret, ctx.session.secret_once = ctx.session.secret_once, ""
        body = self.env.get_template(template).render(
            csrf=ctx.session.csrf, actor=ctx.session.actor, flash=flash, secret_once=secret,
            path=ctx.req.path, settings=self.settings, **values,
        )  # fmt: skip
        return Response(status, body.encode(), [], "text/html; charset=utf-8")

    def invoke(self, ctx: Ctx, op: str, params: dict[str, str] | None = None,
               query: dict[str, str] | None = None,
               body: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
        """Run an /api/v1 operation as this session's admin (audited as ``console:...``)."""
        return self.api.invoke(op, params, query, body, actor=f"console:{ctx.session.actor}",
                               source=ctx.source)  # fmt: skip

    def act(
        self, ctx: Ctx, op: str, done: str, back: str, params: dict[str, str] | None = None,
        query: dict[str, str] | None = None, body: dict[str, Any] | None = None,
    ) -> tuple[Response, dict[str, Any] | None]:  # fmt: skip
        """A POST's work: run ``op``, flash ``done`` or the error, and redirect (303) back."""
        try:
            result = self.invoke(ctx, op, params, query, body)
        except StateError as exc:
            ctx.session.flash.append(("error", str(exc)))
            return web.redirect(web.safe_next(back)), None
        ctx.session.flash.append(("ok", done))
        return web.redirect(web.safe_next(back)), result

    def back(self, ctx: Ctx, path: str, error: str) -> Response:
        """Redirect to ``path`` with ``error`` shown there (a form the API never saw)."""
        ctx.session.flash.append(("error", error))
        return web.redirect(web.safe_next(path))

    def logout(self, ctx: Ctx) -> Response:
        self.sessions.delete(ctx.session.id)
        cookie = web.set_cookie(self.cookie, "", https=self.https, max_age=0)
        return web.redirect(PREFIX + "/login", [("Set-Cookie", cookie)])
