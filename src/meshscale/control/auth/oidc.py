"""The OIDC authorization-code flow as a sans-IO core (docs/protocol/dns-oidc-console.md §3.2).

:class:`LoginFlow` builds the authorization URL (state, nonce, PKCE) and the cookies that bind
it to the browser, then checks a callback: state and cookie, single use, bounded in size and
age. The HTTP driver fetches discovery, exchanges the code and calls
:func:`meshscale.control.auth.idtoken.verify_id_token` with the nonce returned here.
Registration itself only happens on the confirm POST carrying :attr:`PendingConfirm.csrf`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import urlencode, urlsplit

from meshscale.control.auth.idtoken import IdentityClaims, LoginRefused
from meshscale.control.oidcconfig import OIDCConfig

CALLBACK_PATH = "/oidc/callback"
CONFIRM_PATH = "/register/confirm/"
SESSION_TTL_S = 15 * 60
MAX_SESSIONS = 1024  # bounded: unauthenticated visitors can start logins (cache-fill DoS)
STATE_COOKIE_AGE_S = 3600


@dataclass(frozen=True, slots=True)
class Discovery:
    """The parts of ``/.well-known/openid-configuration`` the flow needs."""

    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    userinfo_endpoint: str = ""


def parse_discovery(doc: Mapping[str, object], want_issuer: str) -> Discovery:
    """Validate a discovery document: issuer must equal the configured one (OIDC Discovery §4.3)."""

    def url(key: str, required: bool = True) -> str:
        value = doc.get(key)
        if not isinstance(value, str) or not value:
            if required:
                raise LoginRefused(502, f"identity provider discovery lacks {key}")
            return ""
        if urlsplit(value).scheme not in ("https", "http"):
            raise LoginRefused(502, f"identity provider discovery {key} is not an http(s) URL")
        return value

    issuer = url("issuer")
    if issuer.rstrip("/") != want_issuer.rstrip("/"):
        raise LoginRefused(502, "identity provider discovery issuer differs from oidc.issuer")
    return Discovery(
        issuer=issuer,
        authorization_endpoint=url("authorization_endpoint"),
        token_endpoint=url("token_endpoint"),
        jwks_uri=url("jwks_uri"),
        userinfo_endpoint=url("userinfo_endpoint", required=False),
    )


def pkce_challenge(verifier: str, method: str) -> str:
    if method == "plain":
        return verifier
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


@dataclass(frozen=True, slots=True)
class Cookie:
    name: str
    value: str
    path: str
    max_age: int
    secure: bool
    same_site: str = "Lax"

    def header(self) -> str:
        parts = [f"{self.name}={self.value}", f"Path={self.path}", f"Max-Age={self.max_age}"]
        parts += ["HttpOnly", f"SameSite={self.same_site}"]
        if self.secure:
            parts.append("Secure")
        return "; ".join(parts)


@dataclass(frozen=True, slots=True)
class LoginSession:
    auth_id: str
    state: str
    nonce: str
    verifier: str
    started: float


@dataclass(frozen=True, slots=True)
class Started:
    url: str
    cookie: Cookie
    session: LoginSession


@dataclass(frozen=True, slots=True)
class PendingConfirm:
    """A verified identity waiting for the browser's confirm POST."""

    auth_id: str
    identity: IdentityClaims
    csrf: str
    started: float


def state_cookie_name(state: str) -> str:
    # The name embeds the state, so several open login tabs each keep their own cookie.
    return f"state_{state[:6]}"


class LoginFlow:
    """Pending logins for one OIDC provider. Not thread-safe; one event loop owns it."""

    def __init__(
        self,
        cfg: OIDCConfig,
        server_url: str,
        clock: Callable[[], float],
        token: Callable[[int], str] = secrets.token_urlsafe,
    ) -> None:
        self.cfg = cfg
        self.server_url = server_url.rstrip("/")
        self.redirect_uri = self.server_url + CALLBACK_PATH
        # Secure from the configured scheme, not from the request (proxies terminate TLS).
        self.secure = urlsplit(self.server_url).scheme == "https"
        self.clock = clock
        self.token = token
        self._sessions: OrderedDict[str, LoginSession] = OrderedDict()
        self._confirms: OrderedDict[str, PendingConfirm] = OrderedDict()

    def _expire(self) -> None:
        cutoff = self.clock() - SESSION_TTL_S
        sessions, confirms = self._sessions, self._confirms
        while sessions and (
            len(sessions) > MAX_SESSIONS or next(iter(sessions.values())).started < cutoff
        ):
            sessions.popitem(last=False)
        while confirms and (
            len(confirms) > MAX_SESSIONS or next(iter(confirms.values())).started < cutoff
        ):
            confirms.popitem(last=False)

    def start(self, auth_id: str, discovery: Discovery) -> Started:
        """A new login for ``auth_id``: the IdP URL to redirect to and the state cookie to set."""
        s = LoginSession(auth_id, self.token(32), self.token(32), self.token(48), self.clock())
        self._sessions[s.state] = s
        self._expire()
        params = {
            "client_id": self.cfg.client_id,
            "redirect_uri": self.redirect_uri,
            "response_type": "code",
            "scope": " ".join(self.cfg.scope),
            "state": s.state,
            "nonce": s.nonce,
        }
        if self.cfg.pkce_enabled:
            params["code_challenge"] = pkce_challenge(s.verifier, self.cfg.pkce_method)
            params["code_challenge_method"] = self.cfg.pkce_method
        # validate_oidc refused reserved names, so extra_params cannot override the above.
        params.update(self.cfg.extra_params)
        sep = "&" if "?" in discovery.authorization_endpoint else "?"
        url = discovery.authorization_endpoint + sep + urlencode(params)
        cookie = Cookie(
            state_cookie_name(s.state), s.state, CALLBACK_PATH, STATE_COOKIE_AGE_S, self.secure
        )
        return Started(url, cookie, s)

    def take_session(
        self, query: Mapping[str, str], cookies: Mapping[str, str]
    ) -> tuple[LoginSession, str]:
        """Check a callback's ``code``/``state`` against the cookie; consume the state.

        Returns the session and the code. Order as Headscale main, but the state is looked up
        (and consumed) before any user is touched.
        """
        if "error" in query:
            raise LoginRefused(403, f"identity provider refused: {query['error'][:80]}")
        code, state = query.get("code", ""), query.get("state", "")
        if not code or not state:
            raise LoginRefused(400, "callback without code or state")
        if len(state) < 6:
            raise LoginRefused(400, "callback state too short")
        cookie = cookies.get(state_cookie_name(state))
        if cookie is None:
            raise LoginRefused(400, "state cookie missing: start the login again")
        if not hmac.compare_digest(cookie.encode(), state.encode()):
            raise LoginRefused(403, "state does not match this browser")
        self._expire()
        session = self._sessions.pop(state, None)
        if session is None:
            raise LoginRefused(410, "login session expired or already used")
        return session, code

    def identity_verified(self, auth_id: str, identity: IdentityClaims) -> PendingConfirm:
        """Remember a verified identity until the confirm POST; returns the CSRF token to embed."""
        pending = PendingConfirm(auth_id, identity, self.token(32), self.clock())
        self._confirms[auth_id] = pending
        self._expire()
        return pending

    def confirm_cookie(self, pending: PendingConfirm) -> Cookie:
        return Cookie(
            "meshscale_register_confirm",
            pending.csrf,
            CONFIRM_PATH + pending.auth_id,
            SESSION_TTL_S,
            self.secure,
            same_site="Strict",
        )

    def take_confirm(self, auth_id: str, form_token: str, cookie_token: str) -> PendingConfirm:
        """The confirm POST: double-submit CSRF (form field = cookie = ours), single use."""
        self._expire()
        pending = self._confirms.get(auth_id)
        if pending is None:
            raise LoginRefused(410, "confirmation expired or already used")
        ok = bool(form_token) and hmac.compare_digest(form_token.encode(), pending.csrf.encode())
        ok = ok and hmac.compare_digest(cookie_token.encode(), pending.csrf.encode())
        if not ok:
            raise LoginRefused(403, "confirmation token does not match")
        del self._confirms[auth_id]
        return pending
