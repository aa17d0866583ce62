"""A control server written as a short Python script, run on a lab host.

For acceptance tests that need a server variant ``meshscale-control serve`` has no setting
for (approval through a file, a custom DERP verifier, extra debug listeners); otherwise use
:class:`~meshscale.lab.control.ControlServer`.

The script is run as ``python server.py WORKDIR ARGS...`` and must write a pre-auth key to
``WORKDIR/authkey`` once it serves; that file is the readiness signal.

    with script_control_lab(tmp_path, "abc", SERVER_SCRIPT) as sl:
        TailscaleNode(sl.lab.add_public_host("n1"), "n1", ca_cert=sl.ca.cert_path).up(
            CONTROL_URL, sl.authkey, hostname="n1")
"""

from __future__ import annotations

import contextlib
import os
import sys
import textwrap
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from meshscale.lab.clients import missing_clients
from meshscale.lab.lab import Host, Lab
from meshscale.lab.netns import LabError
from meshscale.lab.pki import LabCA
from meshscale.lab.proc import Proc
from meshscale.lab.tailscale import TailscaleNode

CONTROL_NAME = "ctl.lab"
CONTROL_URL = f"https://{CONTROL_NAME}"
START_TIMEOUT = 20.0  # seconds for the script to write its authkey

# The start of a script for script_control_lab: our control app (build_app) for
# https://HOST with DERP region 900 ("lab") on HOST:443 and STUN on 3478, and a reusable
# pre-auth key of user "lab". The script goes on to mount and start what it needs, then
# calls ready(secret).
EMBEDDED_CONTROL_PRELUDE = textwrap.dedent(
    """
    import asyncio, logging, os, ssl, sys
    from meshscale.control.app import AppSettings, build_app
    from meshscale.control.state import State
    from meshscale.io.http import HTTPServer, Router
    from meshscale.key import MachinePrivate, NodePrivate
    from meshscale.relay.app import derp_region, mount_derp
    from meshscale.relay.server import DERPServer
    from meshscale.relay.stun_server import STUNServer
    from meshscale.tailcfg import DERPMap, DERPRegion, from_json

    workdir, host, ip, cert, key = sys.argv[1:6]

    def control_app():  # -> (state, user, pre-auth key secret, app)
        logging.basicConfig(level=logging.INFO)
        state = State.open(os.path.join(workdir, "ctl.db"))
        user = state.create_user("lab")
        secret = state.create_preauth_key(user.id, reusable=True).secret
        region = derp_region(900, "lab", "Lab DERP", host, 443, 3478, ipv4=ip)
        region = from_json(DERPRegion, region)
        app = build_app(
            state, AppSettings(server_url=f"https://{host}", base_domain="ts.lab"),
            DERPMap(Regions={900: region}), control_key=MachinePrivate(os.urandom(32)),
        )
        return state, user, secret, app

    def tls_context():
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(cert, key)
        return ctx

    def ready(secret):
        with open(os.path.join(workdir, "authkey"), "w") as f:
            f.write(secret)
    """
)


def skip_reason(*clients: str) -> str | None:
    """Why a test with official `clients` cannot run here, or None."""
    if os.geteuid() != 0:
        return "lab tests need root"
    if missing_clients(*clients):
        return "official clients not cached (scripts/fetch-clients)"
    return None


def wait_file(path: Path, proc: Proc, timeout: float = START_TIMEOUT) -> str:
    """The non-empty contents of `path`, once `proc` has written it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text():
            return path.read_text()
        if not proc.running:
            break
        time.sleep(0.1)
    raise LabError("control server did not start:\n" + proc.log_text()[-4000:])


def start_script_server(
    host: Host, workdir: Path, script: str, args: Sequence[str], log_name: str = "control"
) -> tuple[Proc, str]:
    """Run `script` on `host` with `workdir` (created) and `args`; (process, authkey)."""
    workdir.mkdir()
    path = workdir / "server.py"
    path.write_text(script)
    proc = host.spawn([sys.executable, str(path), str(workdir), *args], log_name=log_name)
    return proc, wait_file(workdir / "authkey", proc)


@dataclass(frozen=True, slots=True)
class ScriptLab:
    lab: Lab
    ca: LabCA
    ctl: Host
    workdir: Path  # the server's WORKDIR
    srv: Proc
    authkey: str


@contextlib.contextmanager
def script_control_lab(tmp_path: Path, hint: str, script: str) -> Iterator[ScriptLab]:
    """A lab whose public host "ctl" (ctl.lab, with a lab CA certificate) runs `script` as
    ``server.py WORKDIR ctl.lab CTL_IP CERT KEY``."""
    with Lab(hint=hint, workdir=tmp_path / "lab") as lab:
        ctl = lab.add_public_host("ctl")
        lab.add_hosts_entry(CONTROL_NAME, ctl.ip)
        ca = LabCA(tmp_path / "ca")
        cert, key = ca.issue([CONTROL_NAME], [ctl.ip])
        workdir = tmp_path / "ctl"
        args = [CONTROL_NAME, str(ctl.ip), str(cert), str(key)]
        srv, authkey = start_script_server(ctl, workdir, script, args)
        yield ScriptLab(lab, ca, ctl, workdir, srv, authkey)


def join_tailscaled(
    hosts: Sequence[Host], ca: LabCA, authkey: str, srv: Proc, timeout: float
) -> list[TailscaleNode]:
    """One tailscaled per host (named after it) logged in with `authkey`, all Running.

    A failed login carries the tail of the control server's log (`srv`)."""
    nodes = []
    for host in hosts:
        node = TailscaleNode(host, host.name, ca_cert=ca.cert_path)
        nodes.append(node)
        try:
            node.up(CONTROL_URL, authkey, hostname=host.name, timeout=timeout)
        except Exception as exc:
            raise LabError(f"{exc}\n--- control ---\n{srv.log_text()[-4000:]}") from exc
    for node in nodes:
        node.wait_running(timeout=30)
    return nodes
