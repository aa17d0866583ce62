"""Mount the DERP endpoints on a ``meshscale.io.http.Router`` (standalone or embedded).

    router = Router()
    derp = DERPServer(NodePrivate.generate(os.urandom(32)), verify_client=my_hook)
    mount_derp(router, derp)                     # /derp, /derp/probe, /derp/latency-check, ...
    stun = STUNServer(); await stun.start(None, 3478)
    region = derp_region(999, "headscale", "Embedded DERP", "ctl.example.com", 443, 3478)

``derp_region`` builds the DERPMap region JSON object (tailcfg field names,
docs/protocol/derp-disco-stun.md §2.1, 2.4) that the control server publishes.
"""

from __future__ import annotations

import re
from typing import Any

from ..io.http import Request, Response, Router
from .server import DERPServer

_CHALLENGE = re.compile(r"^[A-Za-z0-9._:-]{0,64}$")
NO_CACHE = "no-cache, no-store, must-revalidate, no-transform, max-age=0"


async def probe(req: Request) -> Response:
    """/derp/probe and /derp/latency-check: 200, empty, CORS open (1.11)."""
    if req.method not in ("GET", "HEAD"):
        return Response.text(405, "bogus probe method\n")
    return Response(200, b"", [("Access-Control-Allow-Origin", "*")])


async def generate_204(req: Request) -> Response:
    """Captive-portal check; echoes a well-formed X-Tailscale-Challenge (1.11)."""
    headers = [("Cache-Control", NO_CACHE)]
    challenge = req.headers.get("x-tailscale-challenge")
    if challenge and _CHALLENGE.match(challenge):
        headers.append(("X-Tailscale-Response", f"response {challenge}"))
    return Response(204, b"", headers)


def mount_derp(router: Router, server: DERPServer, *, generate_204_route: bool = True) -> None:
    """Add /derp (upgrade), /derp/probe, /derp/latency-check and /generate_204 to ``router``."""
    router.add_upgrade("/derp", server.handle_upgrade)
    for path in ("/derp/probe", "/derp/latency-check"):
        router.add("*", path, probe)
    if generate_204_route:
        router.add("*", "/generate_204", generate_204)


def derp_node(
    region_id: int,
    name: str,
    hostname: str,
    derp_port: int = 443,
    stun_port: int = 3478,
    *,
    ipv4: str = "",
    ipv6: str = "",
    insecure_for_tests: bool = False,
    can_port80: bool = False,
) -> dict[str, Any]:
    """One DERPNode as JSON; zero-valued optional fields are omitted, as Go's omitempty."""
    node: dict[str, Any] = {"Name": name, "RegionID": region_id, "HostName": hostname}
    if ipv4:
        node["IPv4"] = ipv4
    if ipv6:
        node["IPv6"] = ipv6
    if stun_port != 3478:
        node["STUNPort"] = stun_port
    if derp_port != 443:
        node["DERPPort"] = derp_port
    if insecure_for_tests:
        node["InsecureForTests"] = True
    if can_port80:
        node["CanPort80"] = True
    return node


def derp_region(
    region_id: int,
    region_code: str,
    region_name: str,
    hostname: str,
    derp_port: int = 443,
    stun_port: int = 3478,
    *,
    ipv4: str = "",
    ipv6: str = "",
    node_name: str | None = None,
    insecure_for_tests: bool = False,
    can_port80: bool = False,
    extra_nodes: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A DERPRegion as JSON: its first node from the arguments (named after the region ID
    unless ``node_name``, as Headscale), then ``extra_nodes`` (``derp_node``) for a meshed
    region, in the order clients should try them."""
    first = derp_node(
        region_id,
        node_name or str(region_id),
        hostname,
        derp_port,
        stun_port,
        ipv4=ipv4,
        ipv6=ipv6,
        insecure_for_tests=insecure_for_tests,
        can_port80=can_port80,
    )
    return {
        "RegionID": region_id,
        "RegionCode": region_code,
        "RegionName": region_name,
        "Nodes": [first, *(extra_nodes or [])],
    }
