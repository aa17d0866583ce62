"""controlhttp server side: /key answers and the /ts2021 upgrade's refusals."""

from __future__ import annotations

import asyncio
import base64
import json
import random

import pytest

from meshscale.controlbase import ClientHandshake
from meshscale.controlhttp import NoiseRequest, NoiseUpgrade, key_response
from meshscale.io.http import Headers, Request, Response, UpgradeStream
from meshscale.key import MachinePrivate

KEY = MachinePrivate(bytes([4]) * 32)


def test_key_response() -> None:
    r = key_response(KEY.public(), "130")
    assert r.status == 200
    assert isinstance(r.body, bytes)
    assert json.loads(r.body) == {
        "legacyPublicKey": "mkey:" + "0" * 64,
        "publicKey": KEY.public().text(),
    }
    assert key_response(KEY.public(), None).status == 400
    assert key_response(KEY.public(), "x").status == 400
    old = key_response(KEY.public(), "38")
    assert (old.status, old.body) == (200, b"")


class _NoStream:
    """An UpgradeStream stand-in that fails the test if the handler touches it."""

    accepted = False

    def __getattr__(self, name: str) -> object:
        raise AssertionError(f"stream.{name} used on a refused upgrade")


async def _dispatch(req: NoiseRequest) -> Response:
    return Response()


def _req(headers: list[tuple[str, str]]) -> Request:
    return Request("POST", "/ts2021", "", {}, Headers(headers))


@pytest.mark.parametrize(
    "headers",
    [
        [],
        [("Upgrade", "websocket")],
        [("Upgrade", "tailscale-control-protocol")],
        [("Upgrade", "tailscale-control-protocol"), ("X-Tailscale-Handshake", "%%%")],
        [("Upgrade", "tailscale-control-protocol"), ("X-Tailscale-Handshake", "A" * 400)],
        [("Upgrade", "tailscale-control-protocol"), ("X-Tailscale-Handshake", "AAAA")],
    ],
)
def test_refusals_are_400_before_any_upgrade(headers: list[tuple[str, str]]) -> None:
    up = NoiseUpgrade(KEY, _dispatch, rand=random.Random(1).randbytes)
    stream: UpgradeStream = _NoStream()  # type: ignore[assignment]
    resp = asyncio.run(up(_req(headers), stream))
    assert resp is not None
    assert resp.status == 400


def test_handshake_for_another_server_key_is_refused() -> None:
    other = MachinePrivate(bytes([5]) * 32)
    hs = ClientHandshake(MachinePrivate(bytes([6]) * 32), other.public(), 130, bytes([7]) * 32)
    init = base64.b64encode(hs.initiation).decode()
    up = NoiseUpgrade(KEY, _dispatch, rand=random.Random(1).randbytes)
    stream: UpgradeStream = _NoStream()  # type: ignore[assignment]
    headers = [("Upgrade", "Tailscale-Control-Protocol"), ("X-Tailscale-Handshake", init)]
    resp = asyncio.run(up(_req(headers), stream))
    assert resp is not None
    assert resp.status == 400
