"""OIDC sign-in against the real npm ``oidc-provider`` (pinned), on loopback: its dev login and
consent forms are driven by a cookie-jar HTTP client, our pages verify and enroll."""

from __future__ import annotations

import asyncio
import json
import random
import re
import shutil
import socket
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlencode, urljoin

import pytest
from tests.control.auth.test_oidc_pages import Browser

from meshscale.control.auth.pages import OIDCPages
from meshscale.control.oidcconfig import OIDCConfig
from meshscale.control.state import State
from meshscale.io.http import HTTPServer, Router
from meshscale.key import MachinePublic, NodePublic

ROOT = Path(__file__).resolve().parents[2]
NPM_DIR = ROOT / ".cache" / "npm-oidc"
VERSION = "8.8.1"
USERS = {
    "alice": {"email": "alice@example.net", "email_verified": True, "groups": ["ops"]},
    "mallory": {"email": "mallory@example.net", "email_verified": True, "groups": ["guests"]},
}
pytestmark = [pytest.mark.lab, pytest.mark.slow]


def ensure_provider() -> None:
    if (NPM_DIR / "node_modules" / "oidc-provider").is_dir():
        return
    if shutil.which("npm") is None:
        pytest.fail("npm is needed for the oidc-provider lab test (scripts/install)")
    NPM_DIR.mkdir(parents=True, exist_ok=True)
    subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--prefix", str(NPM_DIR),
                    f"oidc-provider@{VERSION}"], check=True, timeout=300)  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def follow_forms(b: Browser, url: str, login: str) -> tuple[int, str, str]:
    """GET url, then submit the provider's login and consent forms (bounded)."""
    status, at, page = b.open(url)
    for _ in range(4):
        form = re.search(r'<form[^>]*action="([^"]+)"', page)
        if form is None or "/interaction/" not in at:
            return status, at, page
        fields = dict(re.findall(r'<input[^>]*name="([^"]+)"[^>]*value="([^"]*)"', page))
        if 'name="login"' in page:
            fields.update({"login": login, "password": "x"})
        status, at, page = b.open(urljoin(at, form.group(1)), urlencode(fields).encode())
    return status, at, page


def test_oidc_provider_sign_in_and_refusal(tmp_path: Path) -> None:
    ensure_provider()
    idp_port, ctl_port = free_port(), free_port()
    base = f"http://127.0.0.1:{ctl_port}"
    script = NPM_DIR / "oidc_provider.mjs"
    shutil.copy(Path(__file__).with_name("oidc_provider.mjs"), script)
    proc = subprocess.Popen(
        ["node", str(script), str(idp_port), json.dumps(USERS), base + "/oidc/callback"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(1)]
        for _ in range(20):  # warnings come first; bounded
            if lines[-1].startswith("ready") or not lines[-1]:
                break
            lines.append(proc.stdout.readline())
        assert lines[-1].startswith("ready"), lines
        asyncio.run(_run(tmp_path, f"http://127.0.0.1:{idp_port}", base, ctl_port))
    finally:
        proc.terminate()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


async def _run(tmp_path: Path, issuer: str, base: str, port: int) -> None:
    rng = random.Random(1)
    state = State.open(tmp_path / "db.sqlite", None, clock=lambda: datetime.now(UTC),
                       rand=rng.randbytes, randbelow=rng.randrange)  # fmt: skip
    cfg = OIDCConfig(issuer=issuer, client_id="meshscale", client_secret="lab-secret",
                     scope=("openid", "email", "profile", "groups"), pkce_enabled=True,
                     allowed_groups=("ops",))  # fmt: skip
    router = Router()
    OIDCPages(cfg, "lab-secret", base, state).mount(router)
    http = HTTPServer(router)
    await http.start("127.0.0.1", port)
    try:
        await asyncio.to_thread(_browse, state, base)
    finally:
        await http.close(grace=0.1)
        state.close()


def _browse(state: State, base: str) -> None:
    t0 = time.monotonic()
    mk = MachinePublic(b"\x01" * 32)
    reg = state.begin_registration(mk, NodePublic(b"\x02" * 32), {"Hostname": "lab1"})
    b = Browser()
    status, at, page = follow_forms(b, f"{base}/register/{reg.id}", "alice")
    assert status == 200 and "/register/confirm/" in at, (status, at, page[:400])
    assert state.list_nodes() == []
    token = re.search(r"name='meshscale_register_confirm' value='([^']+)'", page)
    assert token
    status, _, done = b.open(at, urlencode({"meshscale_register_confirm": token.group(1)}).encode())
    assert status == 200, done
    (node,) = state.list_nodes()
    user = state.get_user(node.user_id)
    assert (user.oidc_subject, user.email, user.groups) == ("alice", "alice@example.net", ("ops",))
    # mallory is not in allowed_groups: 403, nothing registered.
    reg2 = state.begin_registration(MachinePublic(b"\x03" * 32), NodePublic(b"\x04" * 32), {})
    status, _, page = follow_forms(Browser(), f"{base}/register/{reg2.id}", "mallory")
    assert status == 403, page[:400]
    assert "allowed group" in page
    assert len(state.list_nodes()) == 1
    assert time.monotonic() - t0 < 60
