"""Issue #12 finding 5: a hostile control server's zstd bomb. A real ts2021 server on
loopback answers the map poll with a 16 KB frame that declares (and holds) 64 MiB of
zeros; the node's map stream must refuse it without inflating it."""

from __future__ import annotations

import asyncio
import random
import struct
import tracemalloc
from collections.abc import AsyncIterator

import pytest
import zstandard

from meshscale.controlhttp import ClientError, NoiseRequest, NoiseUpgrade
from meshscale.io.http import HTTPServer, Response, Router
from meshscale.key import MachinePrivate
from meshscale.node.controlclient.direct import MAX_MESSAGE, decompress_bounded
from meshscale.testing.controlclient import ControlClient

pytestmark = pytest.mark.slow

BOMB_SIZE = 64 << 20


def _bomb() -> bytes:
    cobj = zstandard.ZstdCompressor(level=3, write_content_size=True).compressobj(size=BOMB_SIZE)
    zeros = bytes(1 << 20)
    out = b"".join(cobj.compress(zeros) for _ in range(BOMB_SIZE >> 20))
    return out + cobj.flush()


def test_decompress_bounded_caps_declared_sizes() -> None:
    dctx = zstandard.ZstdDecompressor()
    small = zstandard.ZstdCompressor(write_content_size=True).compress(b'{"a":1}')
    assert decompress_bounded(dctx, small) == b'{"a":1}'
    two = small + zstandard.ZstdCompressor().compress(b"xy")
    assert decompress_bounded(dctx, two) == b'{"a":1}xy'
    bomb = _bomb()
    assert len(bomb) < 64 << 10
    with pytest.raises(ClientError, match="inflates past"):
        decompress_bounded(dctx, bomb, limit=1 << 20)
    with pytest.raises(ClientError, match="bad zstd"):
        decompress_bounded(dctx, b"\x28\xb5\x2f\xfd garbage")


def test_map_stream_refuses_zstd_bomb_from_server() -> None:
    bomb = _bomb()

    async def dispatch(req: NoiseRequest) -> Response:
        async def body() -> AsyncIterator[bytes]:
            yield struct.pack("<I", len(bomb)) + bomb
            await asyncio.sleep(30)

        return Response(200, body())

    async def go() -> None:
        rng = random.Random(5)
        key = MachinePrivate(rng.randbytes(32))
        router = Router()
        router.add_upgrade("/ts2021", NoiseUpgrade(key, dispatch, rand=rng.randbytes))
        server = HTTPServer(router)
        port = (await server.start("127.0.0.1", 0)).sockets[0].getsockname()[1]
        c = ControlClient("127.0.0.1", port, control_key=key.public(), rand=rng.randbytes)
        try:
            await c.connect()
            stream = await c.map_stream()
            tracemalloc.start()
            try:
                with pytest.raises(ClientError, match="inflates past"):
                    await stream.next(wait=10)
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
            assert peak < MAX_MESSAGE + (8 << 20)  # never the 64 MiB the frame declares
        finally:
            await c.close()
            await server.close(grace=0.5)

    asyncio.run(asyncio.wait_for(go(), 30))
