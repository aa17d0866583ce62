"""A small ts2021 control client for tests and benchmarks (not the node agent).

It is the node's ``Direct`` session (meshscale.node.controlclient, on meshscale.controlhttp)
with a test node's Hostinfo and conveniences: host and port instead of a URL, keys generated
when not given, map messages as JSON dicts::

    c = ControlClient("127.0.0.1", port, machine_key=..., node_key=..., disco_key=...)
    await c.connect()                              # fetches /key when no control key given
    resp = await c.register(auth_key="hskey-auth-...")
    stream = await c.map_stream(endpoints=["192.0.2.1:41641"])
    first = await stream.next()                     # dict: the full MapResponse JSON
    delta = await stream.next(wait=5)
    await c.close()
"""

from __future__ import annotations

import os
from collections.abc import Callable

from meshscale.controlhttp import ClientError
from meshscale.io import httpclient
from meshscale.key import DiscoPrivate, MachinePrivate, MachinePublic, NodePrivate
from meshscale.node.controlclient.direct import Direct, MapStream
from meshscale.tailcfg import CURRENT_CAPABILITY_VERSION, Hostinfo, NetInfo

__all__ = ["ClientError", "ControlClient", "MapStream", "http_get"]


async def http_get(host: str, port: int, path: str) -> tuple[int, bytes]:
    """(status, body) of a plain ``GET`` (bodies up to 16 MiB)."""
    resp = await httpclient.request("GET", f"http://{host}:{port}{path}", max_body=16 << 20)
    return resp.status, resp.body


class ControlClient(Direct):
    """See the module docstring. Keys are generated from ``rand`` when not given."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        control_key: MachinePublic | None = None,
        machine_key: MachinePrivate | None = None,
        node_key: NodePrivate | None = None,
        disco_key: DiscoPrivate | None = None,
        version: int = CURRENT_CAPABILITY_VERSION,
        hostname: str = "testnode",
        rand: Callable[[int], bytes] = os.urandom,
        local_addr: str | None = None,
    ) -> None:
        authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        super().__init__(
            f"http://{authority}",
            machine_key=machine_key or MachinePrivate(rand(32)),
            node_key=node_key or NodePrivate(rand(32)),
            disco_key=disco_key or DiscoPrivate(rand(32)),
            hostinfo=self.hostinfo,
            control_key=control_key,
            version=version,
            rand=rand,
            local_addr=local_addr,
        )
        self.hostname = hostname

    def hostinfo(self, preferred_derp: int = 0) -> Hostinfo:
        hi = Hostinfo(Hostname=self.hostname, OS="linux", IPNVersion="meshscale-testclient")
        if preferred_derp:
            hi.NetInfo = NetInfo(PreferredDERP=preferred_derp)
        return hi

    def map_request(
        self, *, stream: bool, omit_peers: bool = False, endpoints: list[str] | None = None,
        preferred_derp: int = 0,
    ) -> bytes:  # fmt: skip
        return self.node_map_request(
            stream=stream, omit_peers=omit_peers, endpoints=endpoints or [], endpoint_types=[],
            hostinfo=self.hostinfo(preferred_derp),
        )  # fmt: skip

    async def map_stream(
        self, endpoints: list[str] | None = None, preferred_derp: int = 0
    ) -> MapStream:
        body = self.map_request(stream=True, endpoints=endpoints, preferred_derp=preferred_derp)
        return await self.open_map_stream(body)

    async def lite_update(self, endpoints: list[str], preferred_derp: int = 0) -> int:
        body = self.map_request(
            stream=False, omit_peers=True, endpoints=endpoints, preferred_derp=preferred_derp
        )
        status, _ = await self.request("POST", "/machine/map", body)
        return status
