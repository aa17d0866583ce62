"""Issue #17 acceptance: the admin console in a real browser (headless Chromium through
Selenium) against meshscale-control on HTTPS with the lab CA, with our node and an official
tailscale 1.96.4 client joined and one more of our nodes waiting for approval.

Checked: ``/admin`` without a session is the sign-in page (a password field, no node data)
and ``GET /api/v1/node`` answers 401; signed in with an API key the machines page lists both
nodes with their tailnet addresses; the pending machine is approved and ``up`` returns; the
official client's route is approved; a pre-auth key is created (shown once) and works; an
invalid policy is refused with its message, a valid one is enforced by the official client
(TCP 8080 refused, 5432 allowed), the rollback restores 8080; every change is in the audit
log (page, ``audit list``); a cross-site POST without the CSRF token is refused; the
session cookie is Secure, HttpOnly, SameSite=Strict. Screenshots of each page are saved as
artefacts under ``<tmp_path>/screenshots`` (the path is printed).
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from meshscale.lab import Lab
from meshscale.lab.lab import Host
from meshscale.lab.meshnet import CONTROL_NAME, LAB_USER, MeshNet

pytestmark = [pytest.mark.lab, pytest.mark.interop, pytest.mark.slow, pytest.mark.timeout(300)]

BROWSER = Path(__file__).with_name("browser_console.py")
ROUTE = "10.77.0.0/24"
OPEN = (
    "{\n  // everyone may reach everything\n"
    '  "acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}],\n}\n'
)
DB_ONLY = (
    "{\n  // lab may reach port 5432 and nothing else\n"
    f'  "acls": [{{"action": "accept", "src": ["{LAB_USER}@"], "dst": ["*:5432"]}}],\n}}\n'
)
INVALID = '{"acls": [{"action": "accept", "src": ["group:nosuch"], "dst": ["*:*"]}]}'
ALLOWED_WAIT = 20.0  # an allowed connect may retry this long (filter and tunnel updates)
DENIED_WAIT = 3.0  # a refused connect must still fail after this long


def need_chromium() -> None:
    for tool in ("/usr/bin/chromium", "/usr/bin/chromedriver", "/usr/bin/certutil"):
        if not Path(tool).exists():
            pytest.fail(f"{tool} is needed (scripts/install installs chromium, chromium-driver, "
                        "libnss3-tools)")  # fmt: skip


def browse(host: Host, args: dict[str, Any]) -> dict[str, Any]:
    res = host.run([sys.executable, str(BROWSER), json.dumps(args)], timeout=150, check=False)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    out: dict[str, Any] = json.loads(res.stdout.splitlines()[-1])
    return out


def probe(host: Host, target: str, timeout: float) -> bool:
    res = host.run([sys.executable, "-m", "meshscale.lab.echo", "probe", "--tcp", target,
                    "--timeout", str(timeout)], timeout=timeout + 15)  # fmt: skip
    return json.loads(res.stdout)["tcp"][target] is not None


def reaches(host: Host, target: str, want: bool) -> bool:
    """Whether ``host`` reaches ``target`` as ``want`` says, within the allowed time."""
    if not want:
        return not probe(host, target, DENIED_WAIT)
    deadline = time.monotonic() + ALLOWED_WAIT
    while time.monotonic() < deadline:
        if probe(host, target, 3.0):
            return True
    return False


def curl(host: Host, ca: Path, *args: str) -> str:
    res = host.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert", str(ca),
                    *args], timeout=20)  # fmt: skip
    return res.stdout.strip()


def test_console_in_chromium(need_lab: None, tmp_path: Path) -> None:
    from meshscale.lab.clients import missing_clients
    from meshscale.lab.tailscale import TailscaleNode

    if missing_clients("tailscale", "tailscaled"):
        pytest.skip("official clients not cached (scripts/fetch-clients)")
    need_chromium()
    shots = tmp_path / "screenshots"
    with Lab(hint="con", workdir=tmp_path / "lab") as lab:
        net = MeshNet(lab, tmp_path / "net", control_config={"policy": {"mode": "database"}})
        net.start_control()
        ctl = net.control
        assert ctl is not None
        ca = net.ca.cert_path
        policy_file = tmp_path / "open.hujson"
        policy_file.write_text(OPEN)
        ctl.admin("policy", "set", "-f", str(policy_file))  # version 1
        m = net.add_node("m", lab.add_public_host("m"))
        t = TailscaleNode(lab.add_public_host("t"), "t", ca_cert=ca)
        p = net.add_node("p", lab.add_public_host("p"))
        admin = lab.add_public_host("admin")
        try:
            m.up()
            t.up(net.control_url, net.authkey, hostname="t",
                 extra_args=[f"--advertise-routes={ROUTE}"])  # fmt: skip
            for port in (5432, 8080):
                t.host.spawn([sys.executable, "-m", "meshscale.lab.echo", "serve", "--tcp",
                              str(port)], log_name=f"echo-{port}")  # fmt: skip
            up_p = p.host.spawn([sys.executable, "-m", "meshscale.cli.main", "--socket",
                                 p.socket, "up", f"--login-server={net.control_url}",
                                 "--hostname=p", "--timeout=120s"], log_name="up-p")  # fmt: skip
            api_key = ctl.admin("apikeys", "create").stdout.strip()
            nodes = {n["given_name"]: n for n in ctl.nodes()}
            m_ip, t_ip = nodes["m"]["ip_addresses"][0], nodes["t"]["ip_addresses"][0]
            assert reaches(m.host, f"{t_ip}:8080", True)  # version 1 lets everything through

            # No session: the API answers 401 and /admin redirects to the sign-in page.
            assert curl(admin, ca, f"https://{CONTROL_NAME}/api/v1/node") == "401"
            assert curl(admin, ca, f"https://{CONTROL_NAME}/admin/machines") == "303"
            base = {"url": f"https://{CONTROL_NAME}", "ca": str(ca), "api_key": api_key,
                    "shots": str(shots), "user": LAB_USER, "router": "t",
                    "route": ROUTE}  # fmt: skip
            one = browse(admin, {**base, "phase": 1, "invalid_policy": INVALID,
                                 "valid_policy": DB_ONLY})  # fmt: skip
            assert one["login_url"].startswith(f"https://{CONTROL_NAME}/admin/login")
            assert one["password_fields"] == 1
            assert m_ip not in one["login_source"] and t_ip not in one["login_source"]
            for text in (m_ip, t_ip, "m.ms.lab", "t.ms.lab"):
                assert text in one["machines_text"], text
            assert "p" in one["pending_row"]
            assert up_p.wait(30) == 0, up_p.log_text()
            assert "p" in {n["given_name"] for n in ctl.nodes()}
            approved = {n["given_name"]: n.get("approved_routes", []) for n in ctl.nodes()}
            assert approved["t"] == [ROUTE]
            key = one["preauth_key"]
            assert key.startswith("hskey-auth-")
            listed = ctl.admin_json("preauthkeys", "list", "--user", LAB_USER)
            rows = listed if isinstance(listed, list) else listed.get("preAuthKeys", [])
            assert any(key.startswith(str(r["key"]).removesuffix("-***")) for r in rows)
            assert "group:nosuch" in one["typed_invalid"]  # validated as typed
            assert "group:nosuch" in one["refused"]
            assert "version 3" in one["saved"] or "version" in one["saved"]
            # The valid policy reached the official client: 8080 refused, 5432 allowed.
            assert reaches(m.host, f"{t_ip}:5432", True)
            assert reaches(m.host, f"{t_ip}:8080", False)

            # CSRF: the browser's session cookie, replayed cross-site without the token.
            cookie = next(c for c in one["cookies"] if c["name"] == "__Host-meshscale_console")
            assert cookie["secure"] and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
            jar = f"Cookie: {cookie['name']}={cookie['value']}"
            cross = ["-H", "Origin: https://evil.example", "-H", "Sec-Fetch-Site: cross-site"]
            for extra in (cross, []):
                code = curl(admin, ca, "-X", "POST", "-H", jar, *extra, "--data", "name=mallory",
                            f"https://{CONTROL_NAME}/admin/users")  # fmt: skip
                assert code == "403"
            assert "mallory" not in {u["name"] for u in _rows(ctl.admin_json("users", "list"))}

            history = _rows(ctl.admin_json("policy", "history"), "versions")
            newest = max(int(v["version"]) for v in history)
            two = browse(admin, {**base, "phase": 2, "back_to": 1, "diff": newest, "src": "m"})
            assert "rolled back to version 1" in two["rolled_back"]
            assert "*:5432" in two["diff"]
            assert "cannot reach" not in two["reach"] and "can reach" in two["reach"]
            assert reaches(m.host, f"{t_ip}:8080", True)  # the rollback reached the node too
            for action in ("registerNode", "setApprovedRoutes", "createPreAuthKey", "setPolicy",
                           "rollbackPolicy"):  # fmt: skip
                assert action in two["audit"], action
            assert "console:apikey:" in two["audit"]
            assert "/admin/login" in two["after_logout"]
            audit = _rows(ctl.admin_json("audit", "list"), "entries")
            assert {"registerNode", "setApprovedRoutes", "createPreAuthKey", "setPolicy",
                    "rollbackPolicy"} <= {e["action"] for e in audit}  # fmt: skip
            names = sorted(f.name for f in shots.glob("*.png"))
            assert len(names) >= 17, names
            print(f"console screenshots in {shots}: {names}")
            print(f"browser seconds: {one['seconds']} + {two['seconds']}")
        except BaseException:
            print("--- control ---\n" + ctl.log_text()[-3000:])
            raise
        finally:
            t.stop()
            keep = Path("/tmp/meshscale-console-screenshots")
            shutil.rmtree(keep, ignore_errors=True)
            if shots.exists():
                shutil.copytree(shots, keep)


def _rows(out: Any, key: str = "users") -> list[dict[str, Any]]:
    return list(out if isinstance(out, list) else out.get(key, []))
