"""The route and exit-node flags shared by ``up`` and ``set`` (tailscale's names and defaults).

    --advertise-routes=CIDR,...   subnet routes to offer ("" clears)
    --advertise-exit-node         offer this node as an exit node (adds 0.0.0.0/0 and ::/0)
    --accept-routes               use the subnet routes other nodes offer
    --exit-node=IP|NAME           send internet traffic through that peer ("" clears)
    --exit-node-allow-lan-access  keep the local LAN direct while using an exit node
    --snat-subnet-routes          masquerade forwarded traffic (default true)

Validation is the daemon's too (``wgengine.router.routes``); checking here first gives the
message before anything is sent.
"""

from __future__ import annotations

import argparse
import ipaddress
from typing import Any

from meshscale.wgengine.router.routes import EXIT_ROUTES, RouteError, calc_advertise_routes

from .common import find_peer
from .goflags import add_bool_flag
from .localclient import CLIError, LocalClient

FLAGS = ("advertise-routes", "advertise-exit-node", "accept-routes", "exit-node",
         "exit-node-allow-lan-access", "snat-subnet-routes")  # fmt: skip


def _routes_arg(text: str) -> str:
    """argparse type: refuse a malformed route list while parsing, before the daemon is asked."""
    try:
        calc_advertise_routes(text, False)
    except RouteError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def add(p: argparse.ArgumentParser) -> None:
    p.add_argument("--advertise-routes", default=None, metavar="CIDR,...", type=_routes_arg,
                   help="routes to advertise to other nodes (comma-separated)")  # fmt: skip
    add_bool_flag(p, "advertise-exit-node", None, "offer to be an exit node for internet traffic")
    add_bool_flag(p, "accept-routes", None, "accept routes advertised by other nodes")
    p.add_argument("--exit-node", default=None, metavar="IP|NAME",
                   help="Tailscale exit node for internet traffic ('' to clear)")  # fmt: skip
    add_bool_flag(
        p,
        "exit-node-allow-lan-access",
        None,
        "allow direct access to the local network when routing via an exit node",
    )
    add_bool_flag(
        p,
        "snat-subnet-routes",
        None,
        "source-NAT traffic to local routes advertised with --advertise-routes",
    )


def mentioned(args: argparse.Namespace) -> dict[str, bool]:
    return {f: getattr(args, f.replace("-", "_"), None) is not None for f in FLAGS}


def current(prefs: dict[str, Any]) -> dict[str, str]:
    """The non-default route settings of ``prefs``, as the flag values that restate them."""
    routes = [r for r in prefs.get("AdvertiseRoutes") or [] if r not in ("0.0.0.0/0", "::/0")]
    exit_adv = "0.0.0.0/0" in (prefs.get("AdvertiseRoutes") or [])
    return {
        "advertise-routes": ",".join(routes),
        "advertise-exit-node": "true" if exit_adv else "",
        "accept-routes": "true" if prefs.get("RouteAll") else "",
        "exit-node": str(prefs.get("ExitNodeIP") or ""),
        "exit-node-allow-lan-access": "true" if prefs.get("ExitNodeAllowLANAccess") else "",
        "snat-subnet-routes": "false" if prefs.get("NoSNAT") else "",
    }


def apply(args: argparse.Namespace, prefs: dict[str, Any], client: LocalClient,
          reset: bool = False) -> None:  # fmt: skip
    """Fold the given flags into ``prefs`` (a Prefs JSON dict). Raises CLIError (code 2)."""
    old = [str(r) for r in prefs.get("AdvertiseRoutes") or []]
    old_exit = "0.0.0.0/0" in old
    routes_text = args.advertise_routes
    exit_adv = args.advertise_exit_node
    if routes_text is not None or exit_adv is not None or reset:
        if routes_text is None:
            kept = [r for r in old if r not in ("0.0.0.0/0", "::/0")]
            routes_text = "" if reset else ",".join(kept)
        if exit_adv is None:
            exit_adv = False if reset else old_exit
        try:
            nets = calc_advertise_routes(routes_text, exit_adv)
        except RouteError as exc:
            raise CLIError(f"--advertise-routes: {exc}", code=2) from None
        prefs["AdvertiseRoutes"] = [str(n) for n in nets]
    if args.accept_routes is not None or reset:
        prefs["RouteAll"] = bool(args.accept_routes)
    if args.exit_node_allow_lan_access is not None or reset:
        prefs["ExitNodeAllowLANAccess"] = bool(args.exit_node_allow_lan_access)
    if args.snat_subnet_routes is not None or reset:
        prefs["NoSNAT"] = args.snat_subnet_routes is False
    if args.exit_node is not None or reset:
        prefs["ExitNodeIP"], prefs["ExitNodeID"] = _exit_node(args.exit_node or "", client), ""
    if prefs.get("ExitNodeIP") and any(str(r) in prefs.get("AdvertiseRoutes", [])
                                       for r in EXIT_ROUTES):  # fmt: skip
        raise CLIError("cannot advertise an exit node and use an exit node at the same time",
                       code=2)  # fmt: skip


def _exit_node(target: str, client: LocalClient) -> str:
    target = target.strip()
    if not target:
        return ""
    if target.startswith("auto:"):
        raise CLIError(f"--exit-node={target}: automatic exit nodes are not supported", code=2)
    try:
        return str(ipaddress.ip_address(target))
    except ValueError:
        pass
    try:
        peer = find_peer(client.get("status"), target)
    except CLIError as exc:
        raise CLIError(f"--exit-node: {exc}", code=2) from None
    ips = [ip for ip in peer.get("TailscaleIPs") or [] if "." in ip] or peer.get("TailscaleIPs")
    if not ips:
        raise CLIError(f"--exit-node: {target} has no Tailscale IP", code=2)
    return str(ips[0])
