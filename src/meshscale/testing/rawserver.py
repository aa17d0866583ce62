"""A scripted HTTP peer for client tests: it reads one request head and answers fixed bytes.

For the answers no real server gives (a short status line, a 101 with the wrong headers,
garbage, silence) that every HTTP client must survive::

    async with canned_server(b"HTTP/1.1\\r\\n\\r\\n", seen) as port:
        ...  # dial 127.0.0.1:port; ``seen`` collects the request heads received
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

HANDLER_GRACE = 2.0  # seconds the server waits for its connections to finish on exit


@contextlib.asynccontextmanager
async def canned_server(answer: bytes, seen: list[bytes] | None = None) -> AsyncIterator[int]:
    """Listen on 127.0.0.1; per connection: read a head, write ``answer``, close."""
    handlers: set[asyncio.Task[object]] = set()

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            handlers.add(task)
        with contextlib.suppress(Exception):
            head = await r.readuntil(b"\r\n\r\n")
            if seen is not None:
                seen.append(head)
            w.write(answer)
            await w.drain()
        w.close()
        with contextlib.suppress(Exception):
            await w.wait_closed()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield int(srv.sockets[0].getsockname()[1])
    finally:
        srv.close()
        await srv.wait_closed()
        if handlers:
            await asyncio.wait(handlers, timeout=HANDLER_GRACE)
