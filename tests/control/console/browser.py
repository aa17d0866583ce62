"""A cookie-keeping client for the console in tests: Requests straight into Console.handle."""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from urllib.parse import parse_qsl, urlencode, urlsplit

from meshscale.control.console import Console
from meshscale.io.http import Headers, Request, Response


@dataclass
class Reply:
    status: int
    headers: list[tuple[str, str]]
    text: str

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None

    def cookies_set(self) -> list[str]:
        return [v for k, v in self.headers if k.lower() == "set-cookie"]

    def csrf(self) -> str:
        found = re.search(r'name="csrf" value="([^"]+)"', self.text)
        assert found, "page has no CSRF field"
        return found.group(1)


@dataclass
class Browser:
    console: Console
    origin: str = "https://control.test"
    jar: dict[str, str] = field(default_factory=dict)
    client: tuple[str, int] = ("192.0.2.7", 40000)

    def send(self, method: str, target: str, body: bytes = b"",
             headers: list[tuple[str, str]] | None = None) -> Reply:  # fmt: skip
        parts = urlsplit(target)
        hdrs = [("host", urlsplit(self.origin).netloc), *(headers or [])]
        if self.jar:
            hdrs.append(("cookie", "; ".join(f"{k}={v}" for k, v in self.jar.items())))
        query = dict(parse_qsl(parts.query))
        req = Request(method, parts.path, parts.query, query, Headers(hdrs), body,
                      client=self.client, tls=self.origin.startswith("https"))  # fmt: skip
        resp: Response = asyncio.run(self.console.handle(req))
        assert isinstance(resp.body, bytes)
        for k, v in resp.headers:
            if k.lower() == "set-cookie":
                c: SimpleCookie = SimpleCookie(v)
                for name, morsel in c.items():
                    if morsel["max-age"] == "0":
                        self.jar.pop(name, None)
                    else:
                        self.jar[name] = morsel.value
        headers = [*resp.headers, ("content-type", resp.content_type or "")]
        return Reply(resp.status, headers, resp.body.decode())

    def get(self, target: str) -> Reply:
        return self.send("GET", target, headers=[("sec-fetch-site", "none")])

    def post(self, target: str, fields: dict[str, str | list[str]],
             origin: str | None = None, site: str = "same-origin") -> Reply:  # fmt: skip
        pairs: list[tuple[str, str]] = []
        for k, v in fields.items():
            pairs += [(k, x) for x in (v if isinstance(v, list) else [v])]
        headers = [("content-type", "application/x-www-form-urlencoded"),
                   ("origin", origin or self.origin), ("sec-fetch-site", site)]  # fmt: skip
        return self.send("POST", target, urlencode(pairs).encode(), headers)

    def sign_in(self, api_key: str) -> Reply:
        page = self.get("/admin/login")
        token = re.search(r'name="login_token" value="([^"]+)"', page.text)
        assert token
        return self.post("/admin/login", {"login_token": token.group(1), "api_key": api_key,
                                           "next": "/admin/machines"})  # fmt: skip
