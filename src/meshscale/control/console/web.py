"""HTTP plumbing of the console: cookies, forms, the same-origin check, security headers.

Every console response carries the headers of spec dns-oidc-console §4.4 (a CSP without
inline script or style, no framing, no sniffing, no referrer; HSTS on https). Whether a
cookie is ``Secure`` follows the configured ``server_url`` scheme, never the request or a
forwarded header: a request that reached an https server over plain http still gets a
``Secure`` cookie, which the browser then keeps off plain http.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from meshscale.control.auth.cookies import request_cookies
from meshscale.io.http import Request, Response

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "object-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
MAX_FORM_BYTES = 128 * 1024  # a policy document plus a little; bounds memory per request


def security_headers(https: bool) -> list[tuple[str, str]]:
    headers = [
        ("Content-Security-Policy", CSP),
        ("X-Frame-Options", "DENY"),
        ("X-Content-Type-Options", "nosniff"),
        ("Referrer-Policy", "no-referrer"),
        ("Cross-Origin-Opener-Policy", "same-origin"),
    ]
    if https:
        headers.append(("Strict-Transport-Security", "max-age=31536000"))
    return headers


def cookies(req: Request) -> dict[str, str]:
    """The request's cookies (see :func:`meshscale.control.auth.cookies.request_cookies`)."""
    return request_cookies(req)


def set_cookie(name: str, value: str, *, https: bool, max_age: int | None = None) -> str:
    """A ``Set-Cookie`` value: HttpOnly, SameSite=Strict, Path=/, Secure on https."""
    parts = [f"{name}={value}", "Path=/", "HttpOnly", "SameSite=Strict"]
    if https:
        parts.append("Secure")
    if max_age is not None:
        parts.append(f"Max-Age={max_age}")
    return "; ".join(parts)


def cookie_name(base: str, https: bool) -> str:
    """``__Host-`` prefixed on https (the browser then insists on Secure, Path=/, no Domain)."""
    return f"__Host-{base}" if https else base


def form(req: Request) -> dict[str, list[str]]:
    """The urlencoded body's fields (every value of each); empty if it is anything else."""
    ctype = (req.headers.get("content-type") or "").split(";")[0].strip().lower()
    if ctype != "application/x-www-form-urlencoded" or len(req.body) > MAX_FORM_BYTES:
        return {}
    out: dict[str, list[str]] = {}
    try:
        text = req.body.decode()
    except UnicodeDecodeError:
        return {}
    for k, v in parse_qsl(text, keep_blank_values=True, max_num_fields=1000):
        out.setdefault(k, []).append(v)
    return out


def json_body(req: Request) -> dict[str, Any]:
    if len(req.body) > MAX_FORM_BYTES:
        return {}
    try:
        data = json.loads(req.body or b"{}")
    except (ValueError, UnicodeDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def origin_of(url: str) -> str:
    parts = urlsplit(url)
    default = {"http": 80, "https": 443}.get(parts.scheme)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port and parts.port != default else ""
    return f"{parts.scheme}://{host}{port}"


def same_origin(req: Request, server_url: str) -> bool:
    """False for a state-changing request a browser marks as not same-origin.

    ``Sec-Fetch-Site`` decides when present (every current browser sends it): only
    ``same-origin`` passes. ``Origin`` must then be the configured server's, the one the
    browser addressed, or ``null`` (what Chromium sends under ``Referrer-Policy:
    no-referrer``). Without either header the caller is not a browser: the CSRF token alone
    decides.
    """
    site = req.headers.get("sec-fetch-site")
    origin = req.headers.get("origin")
    if site is not None and site != "same-origin":
        return False
    if origin is None:
        return True
    host = req.headers.get("host") or ""
    addressed = f"{'https' if req.tls else 'http'}://{host}"
    if origin == "null":
        return site == "same-origin"
    return origin in (origin_of(server_url), addressed)


def redirect(location: str, headers: list[tuple[str, str]] | None = None) -> Response:
    return Response(303, b"", [("Location", location), *(headers or [])], None)


def safe_next(path: str | None, default: str = "/admin/machines") -> str:
    """A local console path to return to; anything else (another host, ``//x``) is refused."""
    if not path or not path.startswith("/admin") or path.startswith("//") or "\\" in path:
        return default
    if any(c in path for c in "\r\n\0"):
        return default
    return path


def url(path: str, args: dict[str, str] | None = None) -> str:
    return f"{path}?{urlencode(args)}" if args else path
