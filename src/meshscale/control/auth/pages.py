"""OIDC sign-in over HTTP: the thin driver around :class:`meshscale.control.auth.oidc.LoginFlow`.

``GET /register/<id>`` redirects to the IdP; ``GET /oidc/callback`` verifies the ID token and
answers 303 to a code-free confirm page; only ``POST /register/confirm/<id>`` with the CSRF
token enrolls the node. Every refusal is a 4xx (or 502 for a broken IdP), never a 500.
"""

from __future__ import annotations

import html
import json
import logging
import os
import re
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlencode

from meshscale.control import models
from meshscale.control.auth.cookies import request_cookies
from meshscale.control.auth.idtoken import (
    IdentityClaims,
    LoginRefused,
    check_allowed,
    load_jwks,
    merge_userinfo,
    verify_id_token,
)
from meshscale.control.auth.oidc import (
    CALLBACK_PATH,
    CONFIRM_PATH,
    Discovery,
    LoginFlow,
    LoginSession,
    parse_discovery,
)
from meshscale.control.config import ControlConfig
from meshscale.control.oidcconfig import OIDCConfig
from meshscale.control.state import State
from meshscale.control.yamlkeys import ConfigError
from meshscale.io import httpclient
from meshscale.io.http import Request, Response, Router

log = logging.getLogger("meshscale.control.oidc")
IDP_TIMEOUT_S = 30.0  # bounded: a hanging IdP must not hold the page forever
NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9._-]{1,62}$")
CONFIRM_COOKIE = "meshscale_register_confirm"


def _page(
    status: int, title: str, body: str, headers: list[tuple[str, str]] | None = None
) -> Response:
    doc = (
        "<!doctype html><html><head><meta charset='utf-8'><title>meshscale: "
        f"{html.escape(title)}</title></head><body><h1>{html.escape(title)}</h1>{body}</body></html>\n"
    )
    return Response(status, doc.encode(), headers or [], "text/html; charset=utf-8")


def _refused(e: LoginRefused) -> Response:
    return _page(e.status, "sign-in refused", f"<p>{html.escape(e.reason)}</p>")


def user_name(identity: IdentityClaims) -> str:
    """A user name from the identity: preferred_username if valid, else the email's local part."""
    for candidate in (identity.preferred_username, identity.email.split("@", 1)[0]):
        if NAME_RE.match(candidate) and candidate.count("@") <= 1:
            return candidate
    return "oidc-user"


class OIDCPages:
    """The three handlers, sharing one :class:`LoginFlow` and the cached discovery."""

    def __init__(self, cfg: OIDCConfig, client_secret: str, server_url: str, state: State) -> None:
        self.cfg = cfg
        self.client_secret = client_secret
        self.state = state
        self.flow = LoginFlow(cfg, server_url, time.time)
        self._discovery: Discovery | None = None

    def mount(self, router: Router) -> None:
        router.add_prefix("GET", "/register/", self.start)
        router.add_prefix("GET", CONFIRM_PATH, self.confirm_page)
        router.add_prefix("POST", CONFIRM_PATH, self.confirm)
        router.add("GET", CALLBACK_PATH, self.callback)

    async def _get_json(self, url: str) -> dict[str, Any]:
        try:
            resp = await httpclient.request("GET", url, time_limit=IDP_TIMEOUT_S)
            data = resp.json()
        except (OSError, TimeoutError, ValueError, httpclient.HTTPClientError) as e:
            raise LoginRefused(502, f"identity provider unreachable: {type(e).__name__}") from None
        if resp.status != 200 or not isinstance(data, dict):
            raise LoginRefused(502, f"identity provider answered {resp.status} for {url[:80]}")
        return data

    async def discovery(self) -> Discovery:
        if self._discovery is None:
            url = self.cfg.issuer.rstrip("/") + "/.well-known/openid-configuration"
            self._discovery = parse_discovery(await self._get_json(url), self.cfg.issuer)
        return self._discovery

    async def start(self, req: Request) -> Response:
        reg_id = req.path.rsplit("/", 1)[-1]
        if self.state.get_registration(reg_id) is None:
            return _page(404, "unknown or expired registration", "")
        try:
            started = self.flow.start(reg_id, await self.discovery())
        except LoginRefused as e:
            return _refused(e)
        return Response(
            302, b"", [("Location", started.url), ("Set-Cookie", started.cookie.header())], None
        )

    async def _exchange(self, code: str, verifier: str, disc: Discovery) -> dict[str, Any]:
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": self.flow.redirect_uri,
            "client_id": self.cfg.client_id,
            "client_secret": self.client_secret,
        }
        if self.cfg.pkce_enabled:
            form["code_verifier"] = verifier
        try:
            resp = await httpclient.request(
                "POST", disc.token_endpoint, body=urlencode(form).encode(),
                headers=[("Content-Type", "application/x-www-form-urlencoded"),
                         ("Accept", "application/json")],
                time_limit=IDP_TIMEOUT_S,
            )  # fmt: skip
            data = resp.json()
        except (OSError, TimeoutError, ValueError, httpclient.HTTPClientError) as e:
            raise LoginRefused(502, f"token endpoint unreachable: {type(e).__name__}") from None
        if resp.status != 200 or not isinstance(data, dict):
            raise LoginRefused(403, "invalid code")
        return data

    async def verified_identity(self, session: LoginSession, code: str) -> IdentityClaims:
        """Redeem ``code`` at the IdP and verify the ID token (plus userinfo, when offered).

        Raises :class:`LoginRefused`; whether the identity may sign in is the caller's check.
        """
        disc = await self.discovery()
        tokens = await self._exchange(code, session.verifier, disc)
        id_token = tokens.get("id_token")
        if not isinstance(id_token, str) or not id_token:
            raise LoginRefused(400, "token response without id_token")
        keys = load_jwks(json.dumps(await self._get_json(disc.jwks_uri)))
        identity = verify_id_token(
            id_token, keys, issuer=self.cfg.issuer, client_id=self.cfg.client_id,
            nonce=session.nonce, groups_claim=self.cfg.groups_claim,
        )  # fmt: skip
        access = tokens.get("access_token")
        if disc.userinfo_endpoint and isinstance(access, str) and access:
            identity = await self._userinfo(identity, disc.userinfo_endpoint, access)
        return identity

    async def callback(self, req: Request) -> Response:
        try:
            session, code = self.flow.take_session(req.query, request_cookies(req))
            identity = await self.verified_identity(session, code)
        except LoginRefused as e:
            return _refused(e)
        try:
            check_allowed(identity, self.cfg)
        except LoginRefused as e:
            self._revoke(identity, e.reason)
            return _refused(e)
        pending = self.flow.identity_verified(session.auth_id, identity)
        cookie = self.flow.confirm_cookie(pending)
        # 303 to a code-free URL: a replayed callback then fails cleanly (hs#3365).
        return Response(
            303, b"", [("Location", CONFIRM_PATH + session.auth_id),
                       ("Set-Cookie", cookie.header())], None,
        )  # fmt: skip

    def _revoke(self, identity: IdentityClaims, reason: str) -> None:
        """A verified identity the allow-list now refuses loses its nodes (issue #12).

        Only after the ID token verified: an unverified claim never touches a node.
        """
        try:
            expired = self.state.revoke_identity(identity.issuer, identity.subject)
        except Exception:  # the refusal page must still be answered, never a 500
            log.exception("oidc: could not expire the nodes of a refused identity")
            return
        if expired:  # once: a later refusal finds them expired already
            log.warning(
                "oidc: %s/%s refused (%s); expired its %d node(s): %s",
                identity.issuer.rstrip("/"), identity.subject[:80], reason, len(expired),
                ", ".join(str(n) for n in expired),
            )  # fmt: skip

    async def _userinfo(self, identity: IdentityClaims, url: str, access: str) -> IdentityClaims:
        try:
            resp = await httpclient.request(
                "GET",
                url,
                headers=[("Authorization", f"Bearer {access}")],
                time_limit=IDP_TIMEOUT_S,
            )
            info = resp.json()
        except (OSError, TimeoutError, ValueError, httpclient.HTTPClientError):
            return identity  # UserInfo is optional: the verified token stands
        if resp.status != 200 or not isinstance(info, dict):
            return identity
        return merge_userinfo(identity, info, self.cfg.groups_claim)

    async def confirm_page(self, req: Request) -> Response:
        reg_id = req.path.rsplit("/", 1)[-1]
        pending = self.flow._confirms.get(reg_id)
        reg = self.state.get_registration(reg_id)
        if pending is None or reg is None:
            return _page(410, "confirmation expired or already used", "")
        host = html.escape(str(reg.hostinfo.get("Hostname") or "this machine"))
        who = html.escape(pending.identity.email or user_name(pending.identity))
        mkey = html.escape(reg.machine_key.text()[:20])
        body = (
            f"<p>Add <b>{host}</b> (machine key <code>{mkey}</code>) to your account "
            f"<b>{who}</b>?</p>"
            f"<form method='post' action='{html.escape(CONFIRM_PATH + reg_id)}'>"
            f"<input type='hidden' name='{CONFIRM_COOKIE}' value='{html.escape(pending.csrf)}'>"
            "<button type='submit' id='confirm'>Register this machine</button></form>"
        )
        return _page(200, f"register {host}", body)

    async def confirm(self, req: Request) -> Response:
        reg_id = req.path.rsplit("/", 1)[-1]
        form = {k: v[0] for k, v in parse_qs(req.body.decode("utf-8", "replace")).items()}
        try:
            pending = self.flow.take_confirm(
                reg_id, form.get(CONFIRM_COOKIE, ""), request_cookies(req).get(CONFIRM_COOKIE, "")
            )
        except LoginRefused as e:
            return _refused(e)
        ident = pending.identity
        try:
            user = self.state.sign_in_user(
                ident.issuer, ident.subject, name=user_name(ident), display_name=ident.name,
                email=ident.email if (ident.email_verified or not self.cfg.email_verified_required)
                else "",
                groups=ident.groups,
            )  # fmt: skip
            node = self.state.complete_registration(
                reg_id, user.id, method=models.RegisterMethod.OIDC
            )
            if self.cfg.use_expiry_from_token:
                # Node expiry = the ID token's exp, as Headscale does.
                at = datetime.fromtimestamp(ident.expires_at, UTC)
                node = self.state.expire_node(node.id, at=at)
            elif self.cfg.expiry is not None:
                # oidc.expiry (pre-0.29 Headscale): 0 means none, stored as no expiry (hs#3111).
                until = datetime.now(UTC) + self.cfg.expiry if self.cfg.expiry else None
                node = self.state.set_expiry(node.id, until)
        except models.NotFound:
            return _page(410, "registration expired", "<p>Run the login again.</p>")
        except (models.Conflict, models.InvalidArgument) as e:
            return _page(409, "sign-in refused", f"<p>{html.escape(str(e))}</p>")
        return _page(
            200, "machine registered",
            f"<p>{html.escape(node.given_name)} now belongs to {html.escape(user.name)}.</p>",
        )  # fmt: skip


def oidc_pages(config: ControlConfig, state: State) -> OIDCPages | None:
    """The OIDC pages when ``oidc.issuer`` is set; reads client_secret_path ($ENV expanded)."""
    cfg = config.oidc
    if not cfg.enabled:
        return None
    secret = cfg.client_secret
    if cfg.client_secret_path is not None:
        path = os.path.expandvars(str(cfg.client_secret_path))
        try:
            with open(path, encoding="utf-8") as f:
                secret = f.read().strip()
        except OSError as e:
            raise ConfigError(f"config: oidc.client_secret_path: {e.strerror}: {path}") from None
    return OIDCPages(cfg, secret, config.server_url, state)
