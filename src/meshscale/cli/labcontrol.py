"""A lab control server: meshscale-control's protocol app with the embedded DERP and STUN.

    python -m meshscale.cli.labcontrol WORKDIR HOSTNAME IPV4 CERT KEY

Serves ts2021 + DERP on HTTPS 443 (lab CA certificate) and plain HTTP 80, STUN on 3478, one
DERP region (900 "lab"), and writes a reusable pre-auth key to WORKDIR/authkey once ready.
An empty file WORKDIR/approve/<registration id> approves that interactive login (the lab's
stand-in for ``meshscale-control nodes register``).
Used by ``meshscale lab`` and the node lab tests.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import sys

from meshscale.control.app import AppSettings, build_app
from meshscale.control.state import State
from meshscale.io.http import HTTPServer
from meshscale.key import MachinePrivate, NodePrivate
from meshscale.relay.app import derp_region, mount_derp
from meshscale.relay.server import DERPServer
from meshscale.relay.stun_server import STUNServer
from meshscale.tailcfg import DERPMap, DERPRegion, from_json

REGION_ID = 900
APPROVE_POLL = 0.2  # seconds between looks at WORKDIR/approve/


def _control_key(path: str) -> MachinePrivate:
    """The control key survives a restart of the server (clients cache it)."""
    if os.path.exists(path):
        with open(path) as f:
            return MachinePrivate.from_text(f.read().strip())
    key = MachinePrivate(os.urandom(32))
    _write_atomic(path, key.text())
    return key


def _write_atomic(path: str, text: str) -> None:
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


async def serve(workdir: str, host: str, ip: str, cert: str, key: str) -> None:
    state = State.open(os.path.join(workdir, "ctl.db"))
    try:
        user = state.get_user_by_name("lab")
    except Exception:
        user = state.create_user("lab", email="lab@meshscale.lab")
    secret = state.create_preauth_key(user.id, reusable=True).secret
    control_key = _control_key(os.path.join(workdir, "control.key"))
    region = from_json(
        DERPRegion, derp_region(REGION_ID, "lab", "Lab DERP", host, 443, 3478, ipv4=ip)
    )
    app = build_app(
        state, AppSettings(server_url=f"http://{ip}", base_domain="ms.lab"),
        DERPMap(Regions={REGION_ID: region}), control_key=control_key,
    )  # fmt: skip
    mount_derp(app.router, DERPServer(NodePrivate(os.urandom(32))))
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    server = HTTPServer(app.router)
    await server.start(None, 443, ssl=ctx)
    await server.start(None, 80)
    await STUNServer().start(None, 3478)
    await app.start()
    _write_atomic(os.path.join(workdir, "authkey"), secret)
    approve_dir = os.path.join(workdir, "approve")
    os.makedirs(approve_dir, exist_ok=True)
    while True:  # the lab's "admin": approve interactive logins named by a file
        for name in os.listdir(approve_dir):
            try:
                state.complete_registration(name, user.id)
            except Exception as exc:
                logging.warning("approve %s: %s", name[:40], exc)
            os.unlink(os.path.join(approve_dir, name))
        await asyncio.sleep(APPROVE_POLL)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    asyncio.run(serve(*sys.argv[1:6]))


if __name__ == "__main__":
    main()
