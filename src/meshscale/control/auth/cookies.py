"""The cookies a request carries, shared by the registration pages and the console."""

from __future__ import annotations

from http.cookies import CookieError, SimpleCookie

from meshscale.io.http import Request


def request_cookies(req: Request) -> dict[str, str]:
    """Every ``Cookie`` header's name/value pairs; a header that does not parse is skipped."""
    jar: dict[str, str] = {}
    for header in req.headers.get_all("cookie"):
        try:
            parsed: SimpleCookie = SimpleCookie(header)
        except CookieError:
            continue
        jar.update({k: m.value for k, m in parsed.items()})
    return jar
