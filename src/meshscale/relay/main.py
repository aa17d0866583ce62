"""meshscale-derp: a standalone DERP relay + STUN server, with derper's flag names.

    meshscale-derp -a :443 -hostname derp.example.com -certdir /etc/derp -c /var/lib/derper.json
    meshscale-derp -dev                          # plain HTTP on :3340, STUN on 3478
    meshscale-derp -a 127.0.0.1:8080 --plain-http --verify-client-url http://ctl/verify
    meshscale-derp ... --mesh-psk-file /etc/derp/mesh.key --mesh-with derp1.x,derp2.x

Flags take one or two dashes, as Go's flag package does. TLS uses ``<certdir>/<hostname>.crt``
and ``.key`` (derper's manual cert mode). The server key is kept in the ``-c`` JSON file as
``{"PrivateKey": "privkey:<hex>"}`` and created when missing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import os
import signal
import ssl
import sys
from pathlib import Path

from .. import __version__
from ..io import sdnotify
from ..io.http import HTTPServer, Request, Response, Router
from ..key import NodePrivate, NodePublic
from .app import generate_204, mount_derp
from .bootstrap_dns import BootstrapDNS
from .metacert import load_chain_with_meta
from .metrics import mount_metrics
from .server import DERPServer
from .stun_server import STUNServer
from .verify import DEFAULT_TAILSCALED_SOCKET, LocalAPIVerifier, URLVerifier

log = logging.getLogger("meshscale.derp")


def _flag(p: argparse.ArgumentParser, name: str, *alts: str, **kw: object) -> None:
    """Register ``-name`` and ``--name`` (Go flag style)."""
    p.add_argument(f"-{name}", f"--{name}", *alts, **kw)  # type: ignore[arg-type]


def _bool(text: str) -> bool:
    if text.lower() in ("1", "t", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "f", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"not a boolean: {text!r}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="meshscale-derp", description=__doc__.split("\n")[0])
    p.add_argument("-version", "--version", action="version", version=__version__)
    p.add_argument("-a", "--a", dest="a", default=":443", help="listen address (default :443)")
    _flag(p, "hostname", default="derp.example.com", help="TLS host name (cert file stem)")
    _flag(p, "certdir", default="", help="directory with <hostname>.crt and <hostname>.key")
    _flag(p, "certmode", default="manual", choices=["manual"], help="only manual is supported")
    _flag(p, "c", default="", help="JSON file holding the server private key")
    _flag(p, "dev", action="store_true", help="plain HTTP on :3340 (development)")
    _flag(p, "plain-http", action="store_true", help="serve plain HTTP (behind a TLS proxy)")
    _flag(p, "stun", type=_bool, nargs="?", const=True, default=True, help="run STUN")
    _flag(p, "stun-port", type=int, default=3478, help="STUN UDP port")
    _flag(p, "http-port", type=int, default=-1, help="port for /generate_204 (-1 disables)")
    _flag(
        p,
        "verify-clients",
        action="store_true",
        help="admit only peers of the local tailscaled's tailnet (or use the URL)",
    )
    _flag(p, "socket", default="", help="tailscaled socket for --verify-clients")
    _flag(p, "verify-client-url", default="", help="admission URL (POST, JSON)")
    _flag(p, "verify-client-url-fail-open", type=_bool, nargs="?", const=True, default=True)
    _flag(p, "mesh-with", default="", help="comma-separated mesh peers (host or URL)")
    _flag(p, "mesh-psk-file", default="", help="file with the 64-hex-digit mesh key")
    _flag(
        p,
        "meta-cert",
        type=_bool,
        nargs="?",
        const=True,
        default=True,
        help="append the DERP key certificate to the TLS chain (enables fast start)",
    )
    _flag(
        p,
        "accept-connection-limit",
        type=float,
        default=math.inf,
        help="rate limit for accepting new connections (per second)",
    )
    _flag(
        p,
        "accept-connection-burst",
        type=int,
        default=1 << 62,
        help="burst limit for accepting new connections",
    )
    _flag(
        p,
        "bootstrap-dns-names",
        default="",
        help="comma-separated names to answer at /bootstrap-dns",
    )
    _flag(
        p,
        "unpublished-bootstrap-dns-names",
        default="",
        help="names answered at /bootstrap-dns only when asked for with ?q=",
    )
    _flag(p, "debug-addr", default="", help="host:port for Prometheus /debug/metrics")
    _flag(p, "verbose", action="store_true", help="debug logging")
    return p


HOME_PAGE = (
    b"<!doctype html><html><body><h1>meshscale-derp</h1><p>This is a DERP relay for "
    b"<a href='https://tailscale.com/kb/1232/derp-servers'>Tailscale</a>-compatible "
    b"clients (meshscale).</p></body></html>\n"
)


async def home_page(req: Request) -> Response:
    return Response(200, HOME_PAGE, content_type="text/html; charset=utf-8")


def split_addr(addr: str, default_port: int) -> tuple[str | None, int]:
    host, _, port = addr.rpartition(":")
    if not _:
        return (addr or None), default_port
    host = host.strip("[]")
    return (host or None), int(port) if port else default_port


def load_key(path: str) -> NodePrivate:
    if not path:
        return NodePrivate.generate(os.urandom(32))
    p = Path(path)
    if p.exists():
        return NodePrivate.from_text(json.loads(p.read_text())["PrivateKey"])
    key = NodePrivate.generate(os.urandom(32))
    p.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"PrivateKey": key.text()}, f)
    return key


def load_mesh_key(path: str) -> bytes | None:
    if not path:
        return None
    text = Path(path).read_text().strip()
    key = bytes.fromhex(text)
    if len(key) != 32:
        raise ValueError("mesh key must be 64 hex digits")
    return key


def tls_context(certdir: str, hostname: str, meta_key: NodePublic | None) -> ssl.SSLContext:
    """TLS 1.2+ with ``<certdir>/<hostname>.crt|.key``, plus the meta certificate (1.2)."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2  # derper refuses older (1.1)
    base = Path(certdir) / hostname
    if meta_key is None:
        ctx.load_cert_chain(f"{base}.crt", f"{base}.key")
    else:
        load_chain_with_meta(ctx, f"{base}.crt", f"{base}.key", meta_key)
    return ctx


def mesh_url(entry: str, tls: bool, port: int) -> tuple[str, str | None]:
    """(URL, TLS name) for a --mesh-with entry: ``host``, ``host/dialhost`` or a URL."""
    if "://" in entry:
        return entry, None
    host, _, dial = entry.partition("/")
    scheme = "https" if tls else "http"
    default = 443 if tls else 80
    target = dial or host
    netloc = target if port == default else f"{target}:{port}"
    return f"{scheme}://{netloc}/derp", host


async def serve(args: argparse.Namespace, ready: asyncio.Event | None = None) -> None:
    """Run until SIGINT/SIGTERM (or cancellation); every listener is closed on the way out."""
    if args.dev:
        args.a = ":3340" if args.a == ":443" else args.a
        args.plain_http = True
    tls = not args.plain_http
    # Refuse incomplete configurations before anything listens.
    if tls and not args.certdir:
        raise SystemExit("meshscale-derp: TLS needs -certdir (or use --plain-http / -dev)")
    mesh_key = load_mesh_key(args.mesh_psk_file)
    if args.mesh_with and mesh_key is None:
        raise SystemExit("meshscale-derp: --mesh-with needs --mesh-psk-file")
    key = load_key(args.c)
    verifier: URLVerifier | LocalAPIVerifier | None = None
    if args.verify_client_url:
        verifier = URLVerifier(args.verify_client_url, fail_open=args.verify_client_url_fail_open)
    elif args.verify_clients:
        verifier = LocalAPIVerifier(args.socket or DEFAULT_TAILSCALED_SOCKET)
    derp = DERPServer(
        key,
        mesh_key=mesh_key,
        verify_client=verifier,
        accept_limit=args.accept_connection_limit,
        accept_burst=args.accept_connection_burst,
    )
    router = Router()
    mount_derp(router, derp)
    router.add("GET", "/", home_page)
    bootstrap = BootstrapDNS(
        args.bootstrap_dns_names.split(","), args.unpublished_bootstrap_dns_names.split(",")
    )
    router.add("GET", "/bootstrap-dns", bootstrap.handle)
    host, port = split_addr(args.a, 443)
    meta = derp.public if args.meta_cert else None
    ctx = tls_context(args.certdir, args.hostname, meta) if tls else None
    servers: list[HTTPServer] = []
    stun_srv: STUNServer | None = None
    try:
        http = HTTPServer(router, server_header="meshscale-derp")
        servers.append(http)
        await http.start(host, port, ssl=ctx)
        log.info(
            "derp: serving %s on %s:%d, key %s",
            "https" if tls else "http",
            host,
            port,
            derp.public.text(),
        )
        if tls and args.http_port > 0:
            r80 = Router()
            r80.add("*", "/generate_204", generate_204)
            servers.append(HTTPServer(r80))
            await servers[-1].start(host, args.http_port)
        if args.stun:
            stun_srv = STUNServer()
            bound = await stun_srv.start(host, args.stun_port)
            log.info("stun: listening on %s", bound)
        if args.debug_addr:
            dr = Router()
            mount_metrics(dr, derp, stun_srv)
            servers.append(HTTPServer(dr))
            dhost, dport = split_addr(args.debug_addr, 8081)
            await servers[-1].start(dhost, dport)
        for entry in filter(None, (e.strip() for e in args.mesh_with.split(","))):
            url, name = mesh_url(entry, tls, port)
            if name == args.hostname:
                continue  # derper lists itself in the mesh; skip it
            derp.add_mesh_peer(
                url, ssl=ssl.create_default_context() if tls else None, server_name=name
            )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        if ready is not None:
            ready.set()
        sdnotify.notify("READY=1\nSTATUS=serving")
        await stop.wait()
        sdnotify.notify("STOPPING=1")
    finally:
        await derp.close()
        for h in servers:
            await h.close(grace=2)
        if stun_srv is not None:
            stun_srv.close()
        if verifier is not None:
            await verifier.close()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(name)s %(message)s",
    )
    try:
        asyncio.run(serve(args))
    except KeyboardInterrupt:
        pass
    except (OSError, ValueError) as exc:
        print(f"meshscale-derp: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
