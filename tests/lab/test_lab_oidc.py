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
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
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
    "carol": {"email": "carol@other.org", "email_verified": True, "groups": ["ops"]},
    "dave": {"email": "dave@example.net", "email_verified": False, "groups": ["ops"]},
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


_HELD: dict[int, socket.socket] = {}


def free_port() -> int:
    """A loopback port, kept bound until `release` so no outgoing connection takes it
    meanwhile (a closed probe socket lost its port that way: EADDRINUSE under CI load)."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", 0))
    port = int(s.getsockname()[1])
    _HELD[port] = s
    return port


@pytest.fixture(autouse=True)
def _release_all() -> Iterator[None]:
    """A failed test must not leave reservations for a later test's GC to warn about."""
    yield
    for port in list(_HELD):
        release(port)


def release(port: int) -> None:
    """Close the reservation just before the real server binds `port` (idempotent)."""
    held = _HELD.pop(port, None)
    if held is not None:
        held.close()


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


class RecordingBrowser(Browser):
    """The cookie-jar browser, remembering every redirect target (to replay a callback)."""

    def __init__(self) -> None:
        super().__init__()
        self.visited: list[str] = []
        seen = self.visited

        class Record(urllib.request.HTTPRedirectHandler):
            def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any,
                                 newurl: str) -> Any:  # fmt: skip
                seen.append(newurl)
                return super().redirect_request(req, fp, code, msg, headers, newurl)

        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(self.jar), Record
        )


def start_provider(port: int, redirect: str) -> subprocess.Popen[str]:
    script = NPM_DIR / "oidc_provider.mjs"
    shutil.copy(Path(__file__).with_name("oidc_provider.mjs"), script)
    release(port)
    proc = subprocess.Popen(
        ["node", str(script), str(port), json.dumps(USERS), redirect],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    lines = [proc.stdout.readline()]
    for _ in range(20):  # warnings come first; bounded
        if lines[-1].startswith("ready") or not lines[-1]:
            break
        lines.append(proc.stdout.readline())
    assert lines[-1].startswith("ready"), lines
    return proc


def test_oidc_provider_sign_in_and_refusal(tmp_path: Path) -> None:
    """Two real providers, one control state: filters refuse with a 4xx page and register
    nothing, a replayed callback is refused, the same email at two providers is two users."""
    ensure_provider()
    ports = [free_port() for _ in range(4)]  # idp1, ctl1, idp2, ctl2
    bases = [f"http://127.0.0.1:{ports[1]}", f"http://127.0.0.1:{ports[3]}"]
    procs = [start_provider(ports[0], bases[0] + "/oidc/callback")]
    try:
        procs.append(start_provider(ports[2], bases[1] + "/oidc/callback"))
        issuers = [f"http://127.0.0.1:{ports[0]}", f"http://127.0.0.1:{ports[2]}"]
        asyncio.run(_run(tmp_path, issuers, bases, [ports[1], ports[3]]))
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(10)
            if proc.stdout is not None:
                proc.stdout.close()


async def _run(tmp_path: Path, issuers: list[str], bases: list[str], ports: list[int]) -> None:
    rng = random.Random(1)
    state = State.open(tmp_path / "db.sqlite", None, clock=lambda: datetime.now(UTC),
                       rand=rng.randbytes, randbelow=rng.randrange)  # fmt: skip
    servers = []
    for i, (issuer, base, port) in enumerate(zip(issuers, bases, ports, strict=True)):
        # The first control filters by group and domain; the second lets everyone in.
        filters: dict[str, Any] = (
            {"allowed_groups": ("ops",), "allowed_domains": ("example.net",)} if i == 0 else {}
        )
        cfg = OIDCConfig(issuer=issuer, client_id="meshscale", client_secret="lab-secret",
                         scope=("openid", "email", "profile", "groups"), pkce_enabled=True,
                         **filters)  # fmt: skip
        router = Router()
        OIDCPages(cfg, "lab-secret", base, state).mount(router)
        http = HTTPServer(router)
        release(port)
        await http.start("127.0.0.1", port)
        servers.append(http)
    try:
        await asyncio.to_thread(_browse, state, bases)
    finally:
        for http in servers:
            await http.close(grace=0.1)
        state.close()


def _sign_in(state: State, base: str, login: str, n: int, b: Browser) -> tuple[int, str, str]:
    reg = state.begin_registration(
        MachinePublic(bytes([n]) * 32), NodePublic(bytes([n + 100]) * 32), {"Hostname": f"h{n}"}
    )
    before = len(state.list_nodes())
    status, at, page = follow_forms(b, f"{base}/register/{reg.id}", login)
    if status != 200 or "/register/confirm/" not in at:
        return status, at, page
    token = re.search(r"name='meshscale_register_confirm' value='([^']+)'", page)
    assert token, page
    assert len(state.list_nodes()) == before  # the callback itself registered nothing
    return b.open(at, urlencode({"meshscale_register_confirm": token.group(1)}).encode())


def _browse(state: State, bases: list[str]) -> None:
    t0 = time.monotonic()
    b = RecordingBrowser()
    status, _, done = _sign_in(state, bases[0], "alice", 1, b)
    assert status == 200, done
    (node,) = state.list_nodes()
    alice1 = state.get_user(node.user_id)
    assert (alice1.oidc_subject, alice1.email, alice1.groups) == ("alice", "alice@example.net",
                                                                  ("ops",))  # fmt: skip
    # Replaying the used callback URL (code and state) is refused; nothing more is registered.
    (callback,) = [u for u in b.visited if "/oidc/callback?" in u]
    status, _, page = b.open(callback)
    assert status == 410 and "already used" in page, (status, page[:400])
    # Each filter refuses with a 4xx page that says why; nothing is registered.
    for n, (login, want, why) in enumerate(
        [("mallory", 403, "allowed group"), ("carol", 403, "domain is not allowed"),
         ("dave", 403, "not verified")], start=2,
    ):  # fmt: skip
        status, _, page = _sign_in(state, bases[0], login, n, Browser())
        assert (status, why in page) == (want, True), (login, status, page[:400])
        assert len(state.list_nodes()) == 1
    assert {u.name for u in state.list_users()} == {"alice"}
    # alice at the second provider has the same email but is another user.
    status, _, done = _sign_in(state, bases[1], "alice", 5, Browser())
    assert status == 200, done
    alice2 = state.get_user(next(n for n in state.list_nodes() if n.id != node.id).user_id)
    assert alice2.id != alice1.id and alice2.email == alice1.email
    assert alice2.oidc_issuer != alice1.oidc_issuer
    assert time.monotonic() - t0 < 60


def test_oidc_provider_returning_user_outside_the_allow_list_loses_nodes(tmp_path: Path) -> None:
    """Issue #12: alice enrolls while in ``ops``; the control restarts with only ``admins``
    allowed; her next sign-in at the real provider is refused and her node is expired."""
    ensure_provider()
    idp_port, ctl_port = free_port(), free_port()
    base = f"http://127.0.0.1:{ctl_port}"
    proc = start_provider(idp_port, base + "/oidc/callback")
    try:
        asyncio.run(_run_revoke(tmp_path, f"http://127.0.0.1:{idp_port}", base, ctl_port))
    finally:
        proc.terminate()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


async def _run_revoke(tmp_path: Path, issuer: str, base: str, port: int) -> None:
    rng = random.Random(2)
    state = State.open(tmp_path / "db.sqlite", None, clock=lambda: datetime.now(UTC),
                       rand=rng.randbytes, randbelow=rng.randrange)  # fmt: skip
    try:
        for step, groups in enumerate([("ops",), ("admins",)]):  # the edited config
            cfg = OIDCConfig(issuer=issuer, client_id="meshscale", client_secret="lab-secret",
                             scope=("openid", "email", "profile", "groups"), pkce_enabled=True,
                             allowed_groups=groups)  # fmt: skip
            router = Router()
            OIDCPages(cfg, "lab-secret", base, state).mount(router)
            http = HTTPServer(router)
            release(port)
            await http.start("127.0.0.1", port)
            try:
                await asyncio.to_thread(_revoke_step, state, base, step)
            finally:
                await http.close(grace=0.1)
    finally:
        state.close()


def _revoke_step(state: State, base: str, step: int) -> None:
    status, _, page = _sign_in(state, base, "alice", 10 + step, Browser())
    if step == 0:
        assert status == 200, page
        (node,) = state.list_nodes()
        assert node.expiry is None
        return
    assert (status, "allowed group" in page) == (403, True), (status, page[:400])
    (node,) = state.list_nodes()  # the refused login registered nothing...
    assert node.is_expired(datetime.now(UTC))  # ...and alice's old node is expired
    assert state.get_user(node.user_id).oidc_subject == "alice"
