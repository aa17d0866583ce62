"""/bootstrap-dns: addresses of a few names, for clients whose own DNS is broken (1.11).

``GET /bootstrap-dns`` answers ``{"name": ["ip", ...], ...}`` for the published names;
``?q=name`` answers just that name if it is published or in the unpublished list, else
``{}``. Answers are cached for ``CACHE_TTL`` so a flood of requests costs no lookups.
"""

from __future__ import annotations

import asyncio
import json
import socket

from ..io.http import Request, Response

CACHE_TTL = 600.0  # seconds, as derper's refresh period
LOOKUP_TIMEOUT = 5.0  # seconds per name


class BootstrapDNS:
    def __init__(self, published: list[str], unpublished: list[str] | None = None) -> None:
        self.published = [n for n in published if n]
        self.unpublished = [n for n in unpublished or [] if n]
        self._cache: dict[str, tuple[float, list[str]]] = {}

    async def _lookup(self, name: str) -> list[str]:
        loop = asyncio.get_running_loop()
        hit = self._cache.get(name)
        if hit is not None and loop.time() - hit[0] < CACHE_TTL:
            return hit[1]
        try:
            async with asyncio.timeout(LOOKUP_TIMEOUT):
                infos = await loop.getaddrinfo(name, None, type=socket.SOCK_STREAM)
        except (OSError, TimeoutError):
            ips: list[str] = []
        else:
            ips = sorted({str(info[4][0]) for info in infos})
        self._cache[name] = (loop.time(), ips)
        return ips

    async def handle(self, req: Request) -> Response:
        q = req.query.get("q")
        if q is not None:
            names = [q] if q in self.published or q in self.unpublished else []
        else:
            names = self.published
        answer = {n: await self._lookup(n) for n in names}
        return Response.json_bytes(json.dumps(answer).encode())
