"""One ts2021 session with the control server: dial, register, map, lite updates.

The transport (``/key``, the ``/ts2021`` upgrade, Noise, HTTP/2 and the zstd-framed map
stream) is ``meshscale.control.testclient.ControlClient``; ``Direct`` adapts it to the node:
its Hostinfo and MapRequests carry what the backend reports (NetInfo, endpoint types), and
map messages come out decoded as ``tailcfg.MapResponse``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from urllib.parse import urlsplit

from meshscale.control.testclient import ClientError, ControlClient, MapStream
from meshscale.key import DiscoPrivate, MachinePrivate, NodePrivate
from meshscale.tailcfg import (
    CURRENT_CAPABILITY_VERSION,
    Hostinfo,
    MapRequest,
    MapResponse,
    ParseError,
    from_json,
    to_json,
)

__all__ = ["ClientError", "Direct", "MapMessages", "parse_control_url"]


class ControlURLError(ValueError):
    """The control URL cannot be used."""


def parse_control_url(url: str) -> tuple[str, int]:
    """(host, port) of an ``http://`` control URL."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ControlURLError(f"control URL must be http://host[:port], not {url!r}")
    if parts.scheme == "https":
        raise ControlURLError("https:// control URLs are not supported yet; use http://")
    try:
        port = parts.port or 80
    except ValueError as exc:
        raise ControlURLError(f"bad port in control URL {url!r}") from exc
    return parts.hostname, port


class MapMessages:
    """The decoded messages of one map stream (keep-alives included)."""

    def __init__(self, stream: MapStream) -> None:
        self._stream = stream

    async def next(self, wait: float) -> MapResponse:
        """The next message; TimeoutError after ``wait`` s; ClientError when the stream ends."""
        raw = await self._stream.next(wait=wait, skip_keepalive=False)
        try:
            return from_json(MapResponse, raw)
        except ParseError as exc:
            raise ClientError(f"malformed map message: {exc}") from exc


class Direct(ControlClient):
    """A control session for one node; see the module docstring."""

    def __init__(
        self,
        url: str,
        *,
        machine_key: MachinePrivate,
        node_key: NodePrivate,
        disco_key: DiscoPrivate,
        hostinfo: Callable[[], Hostinfo],
        rand: Callable[[int], bytes] = os.urandom,
    ) -> None:
        host, port = parse_control_url(url)
        super().__init__(
            host, port, machine_key=machine_key, node_key=node_key, disco_key=disco_key,
            version=CURRENT_CAPABILITY_VERSION, rand=rand,
        )  # fmt: skip
        self._hostinfo = hostinfo

    def hostinfo(self, preferred_derp: int = 0) -> Hostinfo:
        return self._hostinfo()

    def node_map_request(
        self, *, stream: bool, endpoints: list[str], endpoint_types: list[int],
        omit_peers: bool = False,
    ) -> bytes:  # fmt: skip
        mr = MapRequest(
            Version=self.version,
            Compress="zstd",
            KeepAlive=True,
            NodeKey=self.node_key.public(),
            DiscoKey=self.disco_key.public(),
            Stream=stream,
            OmitPeers=omit_peers,
            Hostinfo=self._hostinfo(),
            Endpoints=endpoints,
            EndpointTypes=endpoint_types,
        )
        return json.dumps(to_json(mr)).encode()

    async def open_map(self, endpoints: list[str], endpoint_types: list[int]) -> MapMessages:
        body = self.node_map_request(
            stream=True, endpoints=endpoints, endpoint_types=endpoint_types
        )
        reply = await self._start("POST", "/machine/map", body)
        if reply.status != 200:
            err = bytearray()
            while (chunk := await reply.data.get()) is not None:
                err += chunk
            raise ClientError(f"map: http {reply.status}: {bytes(err)[:200]!r}")
        return MapMessages(MapStream(reply, compressed=True))

    async def send_lite_update(self, endpoints: list[str], endpoint_types: list[int]) -> None:
        body = self.node_map_request(
            stream=False, omit_peers=True, endpoints=endpoints, endpoint_types=endpoint_types
        )
        status, text = await self.request("POST", "/machine/map", body)
        if status != 200:
            raise ClientError(f"endpoint update: http {status}: {text[:200]!r}")
