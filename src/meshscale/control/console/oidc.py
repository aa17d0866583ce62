"""Console sign-in through the OIDC provider (when ``oidc.issuer`` is set).

``GET /admin/oidc/start`` redirects to the provider (state, nonce, PKCE as configured: the
same :class:`~meshscale.control.auth.oidc.LoginFlow` and token checks as node sign-in, with
its own redirect URI ``<server_url>/admin/oidc/callback``, which the provider must list);
the callback verifies the ID token and opens a console session only for an admin: an email
in ``console.admin_users`` (verified by the provider) or a group in
``console.admin_groups``. Nobody is an admin by default: the first admin is configured,
not "whoever signs in first". The callback answers 303 to a code-free URL.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from meshscale.control.auth.idtoken import (
    IdentityClaims,
    LoginRefused,
)
from meshscale.control.auth.pages import OIDCPages
from meshscale.control.console import web
from meshscale.control.console.app import PREFIX
from meshscale.io.http import Request, Response

if TYPE_CHECKING:
    from meshscale.control.console.app import Console

CALLBACK = f"{PREFIX}/oidc/callback"
LOGIN_ID = "console"  # the LoginFlow's auth id for console sign-ins


def is_admin(identity: IdentityClaims, users: tuple[str, ...], groups: tuple[str, ...]) -> bool:
    email = identity.email.lower()
    if email and identity.email_verified and email in {u.lower() for u in users}:
        return True
    return bool(set(identity.groups) & set(groups))


class ConsoleOIDC:
    """The two console OIDC routes over a dedicated :class:`OIDCPages` (its flow and token
    exchange), see the module docstring."""

    def __init__(self, pages: OIDCPages, server_url: str, admin_users: tuple[str, ...],
                 admin_groups: tuple[str, ...]) -> None:  # fmt: skip
        self.pages = pages
        pages.flow.redirect_uri = server_url.rstrip("/") + CALLBACK
        self.admin_users = admin_users
        self.admin_groups = admin_groups

    async def handle(self, console: Console, req: Request, path: str) -> Response:
        if req.method not in ("GET", "HEAD"):
            return Response.text(405, "method not allowed\n")
        if path == f"{PREFIX}/oidc/start":
            return await self.start()
        if path == CALLBACK:
            return await self.callback(console, req)
        return Response.text(404, "not found\n")

    async def start(self) -> Response:
        try:
            started = self.pages.flow.start(LOGIN_ID, await self.pages.discovery())
        except LoginRefused as e:
            return Response.text(e.status, f"sign-in unavailable: {e.reason}\n")
        cookie = replace(started.cookie, path=CALLBACK)
        return Response(302, b"", [("Location", started.url), ("Set-Cookie", cookie.header())])

    async def callback(self, console: Console, req: Request) -> Response:
        p = self.pages
        try:
            session, code = p.flow.take_session(req.query, web.cookies(req))
            if session.auth_id != LOGIN_ID:
                raise LoginRefused(400, "not a console sign-in")
            identity = await p.verified_identity(session, code)
        except LoginRefused as e:
            return console.login_page(req, f"Sign-in refused: {e.reason}", e.status)
        if not is_admin(identity, self.admin_users, self.admin_groups):
            return console.login_page(req, "Sign-in refused: you are not a console admin.", 403)
        who = identity.email or f"{identity.issuer}#{identity.subject}"
        return console.start_session(req, f"oidc:{who}", None, f"{PREFIX}/machines")
