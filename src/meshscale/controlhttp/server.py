"""The control server's side of ``/key`` and the ``/ts2021`` upgrade: from an HTTP/1.1
request to HTTP/2 inside Noise (the client's side is client.py).

Flow (docs/protocol/control.md §1.1, 2.1-2.7)::

    GET /key?v=N   -> {"legacyPublicKey":"mkey:0..0","publicKey":"mkey:<control key>"}
    POST /ts2021   Upgrade: tailscale-control-protocol
                   X-Tailscale-Handshake: base64(101-byte initiation)
      checks: Upgrade value, header present and valid base64, handshake authenticates
      <- 101 Switching Protocols (Upgrade: tailscale-control-protocol, Connection: upgrade)
      <- 51-byte Noise response [+ early payload in the first record]
      == HTTP/2 (h2c, prior knowledge) inside controlbase records ==

A handshake that fails to parse or authenticate is refused with an HTTP 400 before the
upgrade, so nothing is written on the raw stream. Clients older than
MIN_SUPPORTED_CAPABILITY_VERSION get an error frame instead of the response.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import os
from collections.abc import Callable

from meshscale.controlbase import (
    Conn,
    ControlBaseError,
    encode_early_payload,
    encode_error,
    server_accept,
)
from meshscale.io.http import Request, Response, UpgradeStream
from meshscale.key import MachinePrivate, MachinePublic
from meshscale.tailcfg import (
    MIN_SUPPORTED_CAPABILITY_VERSION,
    NOISE_CAPABILITY_VERSION,
    EarlyNoise,
    OverTLSPublicKeyResponse,
    dumps,
    unsupported_client,
)

from .h2server import H2Server, NoiseHandler
from .limits import NoiseGate, NoiseLimits, Ticket
from .noisestream import NoiseStream

log = logging.getLogger(__name__)

UPGRADE_PROTOCOL = "tailscale-control-protocol"
HANDSHAKE_HEADER = "X-Tailscale-Handshake"
MAX_HANDSHAKE_HEADER = 200  # base64 characters; the initiation is 136: header abuse
LAG_PROBE = 0.05  # seconds between event-loop lag probes (overload shedding, limits.py)


def key_response(control_key: MachinePublic, version_query: str | None) -> Response:
    """``GET /key?v=N``: 400 without a valid v, empty 200 for pre-Noise clients."""
    try:
        v = int(version_query or "")
    except ValueError:
        return Response.text(400, "missing or invalid v parameter\n")
    if v < NOISE_CAPABILITY_VERSION:
        return Response(200, b"")
    return Response.json_bytes(dumps(OverTLSPublicKeyResponse(publicKey=control_key)))


class NoiseUpgrade:
    """The ``/ts2021`` upgrade handler.

    Parameters:
      control_key: the server's persistent Noise static key.
      dispatch: serves the HTTP/2 requests of an established connection.
      rand: ``rand(n)`` random bytes (ephemeral keys, early-noise challenge).
      send_early_payload: write tailcfg.EarlyNoise before HTTP/2 (optional for clients).
      limits: connection caps and per-connection budgets (limits.py); ``gate`` holds the
        counters (``gate.stats()``).
      is_node: whether a machine key belongs to a registered node: such connections get
        the node budget, any other the much smaller unauthenticated one. Without it every
        connection is unauthenticated until it is promoted by nothing: pass it.
    """

    def __init__(
        self,
        control_key: MachinePrivate,
        dispatch: NoiseHandler,
        *,
        rand: Callable[[int], bytes] = os.urandom,
        send_early_payload: bool = True,
        limits: NoiseLimits | None = None,
        is_node: Callable[[MachinePublic], bool] | None = None,
    ) -> None:
        self.control_key = control_key
        self.dispatch = dispatch
        self.rand = rand
        self.send_early_payload = send_early_payload
        self.gate = NoiseGate(limits or NoiseLimits())
        self.is_node = is_node
        self.active = 0
        self._lag_task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start measuring the event loop's lag for overload shedding (NoiseLimits.shed_lag);
        without it the gate never sheds."""
        if self._lag_task is None or self._lag_task.done():
            self._lag_task = asyncio.get_running_loop().create_task(self._watch_lag())

    def accept(self, host: str | None) -> float | None:
        """``HTTPServer(accept_filter=...)`` for the listener that serves /ts2021: while the
        server sheds load, suspect sources are refused before anything is read."""
        return self.gate.accept(host, asyncio.get_running_loop().time())

    async def close(self) -> None:
        if self._lag_task is not None:
            self._lag_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._lag_task
            self._lag_task = None

    async def _watch_lag(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            t0 = loop.time()
            await asyncio.sleep(LAG_PROBE)
            now = loop.time()
            self.gate.observe_lag(now - t0 - LAG_PROBE, now)

    def _classify(self, machine_key: MachinePublic) -> bool:
        return self.is_node is not None and self.is_node(machine_key)

    async def __call__(self, req: Request, stream: UpgradeStream) -> Response | None:
        too_many = self.gate.precheck(
            req.client[0] if req.client else None, asyncio.get_running_loop().time()
        )
        if too_many is not None:  # before the handshake: refusing must stay cheap
            return Response.text(503, too_many + "\n", [("Retry-After", "30")])
        upgrade = (req.headers.get("upgrade") or "").lower()
        if not upgrade:
            return Response.text(400, "missing Upgrade header\n")
        if upgrade != UPGRADE_PROTOCOL:
            return Response.text(400, "unsupported Upgrade protocol\n")
        init_b64 = req.headers.get(HANDSHAKE_HEADER) or req.query.get(HANDSHAKE_HEADER) or ""
        if not init_b64 or len(init_b64) > MAX_HANDSHAKE_HEADER:
            return Response.text(400, "missing or invalid X-Tailscale-Handshake header\n")
        try:
            init = base64.b64decode(init_b64, validate=True)
        except (binascii.Error, ValueError):
            return Response.text(400, "invalid X-Tailscale-Handshake header\n")
        try:
            resp_frame, machine_key, version, (tx, rx) = server_accept(
                init, self.control_key, self.rand(32)
            )
        except ControlBaseError as exc:
            log.info("ts2021: handshake from %s failed: %s", req.client, exc)
            return Response.text(400, "handshake failed\n")
        # Caps before the upgrade: a refused client gets a plain 503 and nothing is held.
        ticket = self.gate.admit(
            req.client[0] if req.client else None,
            self._classify(machine_key),
            asyncio.get_running_loop().time(),
        )
        if isinstance(ticket, str):
            log.info("ts2021: refused %s: %s", req.client, ticket)
            resp = Response.text(503, ticket + "\n")
            resp.headers.append(("Retry-After", "30"))
            return resp
        try:
            if ticket.pace:  # over the new-connection rate: spread the work out
                await asyncio.sleep(ticket.pace)
            await self._serve(stream, resp_frame, machine_key, version, tx, rx, ticket)
        finally:
            self.gate.release(ticket, asyncio.get_running_loop().time())
        return None

    async def _serve(
        self,
        stream: UpgradeStream,
        resp_frame: bytes,
        machine_key: MachinePublic,
        version: int,
        tx: bytes,
        rx: bytes,
        ticket: Ticket,
    ) -> None:
        await stream.accept([("Upgrade", UPGRADE_PROTOCOL), ("Connection", "upgrade")])
        if version < MIN_SUPPORTED_CAPABILITY_VERSION:
            # The client reports the error frame's text ("server error: ...").
            stream.write(encode_error(unsupported_client(version)))
            await stream.drain()
            return
        conn = Conn(tx, rx, machine_key, version)
        out = resp_frame
        if self.send_early_payload:
            chal = "chalpub:" + MachinePrivate(self.rand(32)).public().hex()
            out += conn.send(encode_early_payload(dumps(EarlyNoise(nodeKeyChallenge=chal))))
        stream.write(out)  # corked: response and early payload in one write
        await stream.drain()
        noise = NoiseStream(stream, conn)
        server = H2Server(
            noise,
            self.dispatch,
            machine_key,
            version,
            gate=self.gate,
            ticket=ticket,
            classify=lambda: self._classify(machine_key),
        )
        self.active += 1
        try:
            await server.run()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.active -= 1
