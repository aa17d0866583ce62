"""Acceptance of OIDC sign-in as a user sees it: our node and the official tailscale 1.96.4 run
`up --login-server` with no key against control configured with the real npm oidc-provider; the
printed URL is opened in headless Chromium on the same machine, which signs in at the provider
and confirms; `up` returns and the node is Running, owned by the person who signed in."""

from __future__ import annotations

import json
import re
import shutil
import sys
import time
from pathlib import Path

import pytest
from tests.lab.test_lab_oidc import NPM_DIR, ensure_provider

from meshscale.lab import Lab
from meshscale.lab.lab import Host
from meshscale.lab.meshnet import CONTROL_NAME, MeshNet
from meshscale.lab.proc import Proc

pytestmark = [pytest.mark.lab, pytest.mark.interop, pytest.mark.slow, pytest.mark.timeout(300)]

BROWSER = Path(__file__).with_name("browser_signin.py")
IDP_NAME, IDP_PORT = "idp.lab", 9000
ISSUER = f"http://{IDP_NAME}:{IDP_PORT}"
USERS = {
    "alice": {"email": "alice@example.net", "email_verified": True, "groups": ["ops"],
              "preferred_username": "alice"},
    "bob": {"email": "bob@example.net", "email_verified": True, "groups": ["ops", "dev"],
            "preferred_username": "bob"},
    "mallory": {"email": "mallory@example.net", "email_verified": True, "groups": ["guests"]},
}  # fmt: skip
URL_RE = re.compile(rf"https://{re.escape(CONTROL_NAME)}/register/\S+")
# bob's IdP group "dev" is a policy group without being defined in the policy (hs#2366).
POLICY = '{"acls": [{"action": "accept", "src": ["group:dev"], "dst": ["*:*"]}]}'
PERSON_S = 30.0  # how long a person waits for a step (URL printed, `up` done) before giving up


def need_chromium() -> None:
    for tool in ("/usr/bin/chromium", "/usr/bin/chromedriver"):
        if not Path(tool).exists():
            pytest.fail(f"{tool} is needed (scripts/install installs chromium, chromium-driver)")


def start_idp(lab: Lab) -> Proc:
    idp = lab.add_public_host("idp")
    lab.add_hosts_entry(IDP_NAME, idp.ip)
    script = NPM_DIR / "oidc_provider.mjs"
    shutil.copy(Path(__file__).with_name("oidc_provider.mjs"), script)
    redirect = f"https://{CONTROL_NAME}/oidc/callback"
    proc = idp.spawn(["node", str(script), str(IDP_PORT), json.dumps(USERS), redirect, IDP_NAME],
                     log_name="oidc-provider", cwd=NPM_DIR)  # fmt: skip
    deadline = time.monotonic() + 30
    while f"ready {ISSUER}" not in proc.log_text():
        assert proc.running and time.monotonic() < deadline, proc.log_text()
        time.sleep(0.1)
    return proc


def wait_url(proc: Proc) -> str:
    deadline = time.monotonic() + PERSON_S
    while (m := URL_RE.search(proc.log_text())) is None:
        assert proc.running and time.monotonic() < deadline, proc.log_text()
        time.sleep(0.1)
    return m.group(0)


def browse(host: Host, url: str, login: str, ca: Path) -> dict[str, object]:
    res = host.run([sys.executable, str(BROWSER), url, login, str(ca)], timeout=90, check=False)
    assert res.returncode == 0, res.stdout + res.stderr[-3000:]
    out: dict[str, object] = json.loads(res.stdout.splitlines()[-1])
    return out


def test_up_url_signed_in_with_chromium_ours_and_official(need_lab: None, tmp_path: Path) -> None:
    from meshscale.lab.clients import missing_clients
    from meshscale.lab.tailscale import TailscaleNode

    if missing_clients("tailscale", "tailscaled"):
        pytest.skip("official clients not cached (scripts/fetch-clients)")
    ensure_provider()
    need_chromium()
    oidc = {"issuer": ISSUER, "client_id": "meshscale", "client_secret": "lab-secret",
            "scope": ["openid", "email", "profile", "groups"], "pkce": {"enabled": True},
            "allowed_groups": ["ops"]}  # fmt: skip
    with Lab(hint="oic", workdir=tmp_path / "lab") as lab:
        start_idp(lab)
        policy = tmp_path / "policy.hujson"
        policy.write_text(POLICY)
        net = MeshNet(lab, tmp_path / "net",
                      control_config={"oidc": oidc, "policy": {"path": str(policy)}})  # fmt: skip
        net.start_control()
        assert net.control is not None and net.ca is not None
        ca = net.ca.cert_path
        m = net.add_node("m", lab.add_public_host("m"))
        t = TailscaleNode(lab.add_public_host("t"), "t", ca_cert=ca)
        try:
            # Our node: `meshscale up` prints the URL, the person signs in, `up` says Success.
            up_m = m.host.spawn([sys.executable, "-m", "meshscale.cli.main", "--socket", m.socket,
                                 "up", f"--login-server={net.control_url}", "--hostname=m",
                                 "--timeout=120s"], log_name="up-m")  # fmt: skip
            url = wait_url(up_m)
            # The URL redirects straight to the provider; on https the state cookie is Secure.
            head = m.host.run(["curl", "-s", "-o", "/dev/null", "-D", "-", "--cacert", str(ca),
                               url], timeout=15).stdout  # fmt: skip
            cookie = next(h for h in head.splitlines() if h.lower().startswith("set-cookie:"))
            assert {"Secure", "HttpOnly", "SameSite=Lax"} <= {p.strip() for p in cookie.split(";")}
            assert f"location: {ISSUER}/auth?" in head.lower(), head
            page = browse(m.host, url, "alice", ca)
            assert "Add m " in str(page["asked"]), page
            assert page["title"] == "meshscale: machine registered", page
            seconds = [page["seconds"]]
            assert up_m.wait(PERSON_S) == 0, up_m.log_text()
            assert "Success." in up_m.log_text()
            assert m.status()["BackendState"] == "Running"

            # The official client, the same way.
            up_t = t.host.spawn([t.tailscale, f"--socket={t.socket}", "up",
                                 f"--login-server={net.control_url}", "--hostname=t",
                                 "--accept-dns=false", "--timeout=120s"],
                                env=t.env, log_name="up-t")  # fmt: skip
            url = wait_url(up_t)
            # Someone outside allowed_groups gets a page saying why; the client keeps waiting.
            page = browse(t.host, url, "mallory", ca)
            assert page["title"] == "meshscale: sign-in refused", page
            assert "allowed group" in str(page["text"]) and up_t.running
            page = browse(t.host, url, "bob", ca)
            assert "Add t " in str(page["asked"]), page
            assert page["title"] == "meshscale: machine registered", page
            seconds.append(page["seconds"])
            assert up_t.wait(PERSON_S) == 0, up_t.log_text()
            assert "Success." in up_t.log_text()
            assert t.backend_state() == "Running"

            owners = {n["given_name"]: n["user"]["name"] for n in net.control.nodes()}
            assert owners == {"m": "alice", "t": "bob"}
            # The policy: bob (IdP group dev) reaches alice's node; alice does not reach his.
            ip_m, ip_t = m.ip4(), t.ip4()
            t.wait_peers(1, timeout=PERSON_S)
            ok = t.host.run(["ping", "-c", "3", "-W", "3", ip_m], check=False, timeout=20)
            assert " 0% packet loss" in ok.stdout, ok.stdout
            no = m.host.run(["ping", "-c", "2", "-W", "2", ip_t], check=False, timeout=20)
            assert " 100% packet loss" in no.stdout, no.stdout
            print(f"browser sign-in seconds (ours, official): {seconds}")
        except BaseException:
            print("--- control ---\n" + net.control.log_text()[-3000:])
            print("--- tailscaled ---\n" + t.log_text()[-3000:])
            raise
        finally:
            t.stop()
