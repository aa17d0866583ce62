"""``meshscaled``: the node agent (tailscaled's main flags).

    meshscaled [--state FILE | --statedir DIR] [--socket PATH] [--tun NAME] [--port N]
               [--verbose N] [--resolv-conf PATH]

Loads (or creates) the node's keys and prefs, opens the TUN device, starts the WireGuard
engine on the magicsock bind and serves the local API; if the prefs say so it reconnects to
its control server at once. SIGINT/SIGTERM shut it down cleanly (the TUN device goes away,
the system's resolv.conf is restored). Quad-100 (100.100.100.100, fd7a:115c:a1e0::53) answers
DNS through the TUN; with the --accept-dns pref the system resolver is pointed at it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from meshscale import __version__
from meshscale.io import netmark, sdnotify
from meshscale.io.tun import TunDevice
from meshscale.key import DiscoPrivate
from meshscale.magicsock.hardnat import ProbeBudget
from meshscale.wgengine import Engine
from meshscale.wgengine.magicbind import MagicBind
from meshscale.wgengine.router import TUN_MTU, NetlinkRouter
from meshscale.wgengine.router.netlink import SOCKET_MARK
from meshscale.wireguard.uapi import SetRequest

from .backend import Backend
from .localapi import LocalAPI
from .magicdns.manager import MagicDNS
from .magicdns.osconfig import RESOLV_CONF
from .store import StateError, StateStore

log = logging.getLogger("meshscaled")

DEFAULT_STATEDIR = "/var/lib/meshscale"
DEFAULT_SOCKET = "/var/run/meshscale/meshscaled.sock"
DEFAULT_TUN = "meshscale0"
DEFAULT_PORT = 41641
IFNAMSIZ = 15  # characters in a Linux interface name


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        print(f"meshscaled: {message}", file=sys.stderr)
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="meshscaled", description="meshscale node agent")
    p.add_argument("--state", default="", help="state file path")
    p.add_argument(
        "--statedir", default="", help="directory for state (default " + DEFAULT_STATEDIR + ")"
    )
    p.add_argument("--socket", default=DEFAULT_SOCKET, help="local API unix socket path")
    p.add_argument("--tun", default=DEFAULT_TUN, help="TUN interface name")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="UDP port (0 = automatic)")
    p.add_argument("--verbose", type=int, default=0, help="log verbosity (0, 1 or 2)")
    # tailscaled --version prints the version alone on its first line.
    p.add_argument("--version", "-version", action="version", version=__version__)
    p.add_argument(
        "--resolv-conf", default=str(RESOLV_CONF),
        help="the resolv.conf managed with --accept-dns (default " + str(RESOLV_CONF) + ")",
    )  # fmt: skip
    hn = ProbeBudget()
    p.add_argument(
        "--hard-nat-probes", type=int, default=hn.packets, metavar="PACKETS",
        help="hard-NAT (birthday) probing: most probes per attempt and peer (0 = off, default "
        f"{hn.packets})",
    )  # fmt: skip
    p.add_argument(
        "--hard-nat-ports", type=int, default=hn.ports, metavar="N",
        help=f"hard-NAT probing: extra sockets opened behind a hard NAT (default {hn.ports})",
    )  # fmt: skip
    p.add_argument(
        "--hard-nat-seconds", type=float, default=hn.seconds, metavar="S",
        help=f"hard-NAT probing: longest attempt (default {hn.seconds:g})",
    )  # fmt: skip
    return p


def hard_nat_budget(args: argparse.Namespace) -> ProbeBudget:
    """The probe budget from the flags (ValueError if out of range; check_args tells)."""
    return ProbeBudget(
        packets=args.hard_nat_probes, ports=args.hard_nat_ports, seconds=args.hard_nat_seconds
    )


def state_path(args: argparse.Namespace) -> Path:
    if args.state:
        return Path(args.state)
    return Path(args.statedir or DEFAULT_STATEDIR) / "meshscaled.state"


async def run(args: argparse.Namespace) -> int:
    loop = asyncio.get_running_loop()
    # Every socket we open from here on (control, DERP, WireGuard UDP) carries the mark the
    # policy-routing rules exempt from the tunnel (wgengine.router, §5.7).
    netmark.set_socket_mark(SOCKET_MARK)
    store = StateStore(state_path(args))
    st = store.load_or_create(os.urandom)
    # The disco key is per run, as tailscaled's: peers see it change and drop their stale
    # WireGuard sessions with us. The current one is kept in the state file for inspection.
    st.disco_key = DiscoPrivate.generate(os.urandom(32))
    store.save(st)
    tun = TunDevice.open(args.tun, mtu=TUN_MTU)
    router = NetlinkRouter(args.tun)
    router.up()
    backend: Backend | None = None

    def on_event(ev: object) -> None:
        if backend is not None:
            backend.on_magicsock_event(ev)  # type: ignore[arg-type]

    budget = hard_nat_budget(args)
    if not budget.enabled:
        log.info("hard-NAT probing is off (--hard-nat-probes=0)")
    bind = MagicBind(st.node_key, st.disco_key, on_event=on_event, hard_nat=budget)
    engine = Engine(tun, bind, mtu=TUN_MTU)
    bind.device = engine.device
    engine.uapi_set(SetRequest(private_key=st.node_key.raw, listen_port=args.port))
    bind.start(loop)
    api: LocalAPI | None = None
    magicdns = MagicDNS(
        store.path.parent, args.tun, loop, inject=engine.inject, resolv_conf=Path(args.resolv_conf)
    )
    magicdns.recover()  # a crashed run may have left our resolv.conf behind
    engine.intercept = magicdns.quad100.intercept
    try:
        engine.start()
        magicdns.start()
        backend = Backend(store, st, engine=engine, bind=bind, router=router, magicdns=magicdns)
        api = LocalAPI(backend)
        await api.start(Path(args.socket))
        await backend.run()
        log.info("meshscaled up: tun %s, UDP port %d, socket %s", args.tun, engine.listen_port,
                 args.socket)  # fmt: skip
        sdnotify.notify("READY=1\nSTATUS=serving the local API on " + args.socket)
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        closed: asyncio.Future[bool] = loop.run_in_executor(None, engine.wait_closed)
        waiter: asyncio.Future[bool] = asyncio.ensure_future(stop.wait())
        await asyncio.wait([waiter, closed], return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        return 0
    finally:
        sdnotify.notify("STOPPING=1")
        if api is not None:
            await api.close()
        if backend is not None:
            await backend.close()
        await magicdns.close()  # the system's own DNS back before the interface goes
        await bind.stop()
        engine.close()
        with contextlib.suppress(OSError):
            os.unlink(args.socket)


def check_args(args: argparse.Namespace) -> str | None:
    """A one-line complaint about flags we cannot honour, or None."""
    if args.tun == "userspace-networking":
        return "--tun=userspace-networking is not supported: meshscaled needs a TUN device"
    if not 0 < len(args.tun) <= IFNAMSIZ or "/" in args.tun or " " in args.tun:
        return f"--tun: invalid interface name {args.tun!r}"
    if args.state.startswith(("mem:", "kube:", "arn:")):
        return f"--state: only file paths are supported, not {args.state.split(':', 1)[0]}:"
    if not 0 <= args.port <= 65535:
        return f"--port: {args.port} is not a UDP port"
    try:
        hard_nat_budget(args)
    except ValueError as exc:
        return f"--hard-nat-*: {exc}"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    problem = check_args(args)
    if problem is not None:
        print(f"meshscaled: {problem}", file=sys.stderr)
        return 2
    level = (
        logging.WARNING
        if args.verbose <= 0
        else logging.INFO
        if args.verbose == 1
        else logging.DEBUG
    )
    logging.basicConfig(level=level, format="%(asctime)s %(name)s: %(message)s")
    try:
        return asyncio.run(run(args))
    except StateError as exc:
        print(f"meshscaled: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"meshscaled: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
