"""Drive the admin console as an admin would, in headless Chromium (Debian's chromium +
chromium-driver, through Selenium), inside a lab namespace:

    python browser_console.py ARGS_JSON

ARGS_JSON: {"url", "ca", "api_key", "shots", "phase", ...}. Phase 1 signs in and approves
a pending machine and a route, creates a pre-auth key, is refused an invalid policy and saves
a valid one; phase 2 rolls the policy back, tries the reach tester, reads the audit log and
signs out. Each page is saved as a PNG in ``shots``. Prints one JSON line of what it saw.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import Select, WebDriverWait

sys.path.insert(0, str(Path(__file__).parent))
from browser_signin import CHROMEDRIVER, CHROMIUM, STEP_S, trust_ca

PENDING_S = 30.0  # how long the pending machine may take to show up


class Admin:
    def __init__(self, driver: WebDriver, base: str, shots: Path) -> None:
        self.d = driver
        self.base = base
        self.shots = shots
        self.wait = WebDriverWait(driver, STEP_S)
        self.n = 0

    def go(self, path: str) -> None:
        self.d.get(self.base + path)

    def shot(self, name: str) -> None:
        self.n += 1
        self.d.save_screenshot(str(self.shots / f"{name}.png"))

    def text(self) -> str:
        return str(self.d.find_element(By.TAG_NAME, "body").text)

    def flash(self, contains: str) -> str:
        self.wait.until(ec.text_to_be_present_in_element((By.CSS_SELECTOR, "p.flash"), contains))
        return str(self.d.find_element(By.CSS_SELECTOR, "p.flash").text)

    def sign_in(self, key: str) -> None:
        self.go("/admin/login")
        field = self.wait.until(ec.presence_of_element_located((By.ID, "api_key")))
        field.send_keys(key)
        self.d.find_element(By.CSS_SELECTOR, "#login-form button[type=submit]").click()
        self.wait.until(ec.presence_of_element_located((By.ID, "machines")))

    def type_policy(self, text: str) -> None:
        area = self.d.find_element(By.ID, "policy-text")
        area.send_keys(Keys.CONTROL, "a")
        area.send_keys(Keys.DELETE)
        area.send_keys(text)


def phase1(a: Admin, args: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    a.go("/admin")
    a.wait.until(ec.presence_of_element_located((By.ID, "api_key")))
    out["login_url"] = a.d.current_url
    out["password_fields"] = len(a.d.find_elements(By.CSS_SELECTOR, "input[type=password]"))
    out["login_source"] = a.d.page_source
    a.shot("01-sign-in")
    a.sign_in(args["api_key"])
    out["machines_text"] = a.text()
    a.shot("02-machines")
    out["cookies"] = a.d.get_cookies()

    deadline = time.monotonic() + PENDING_S  # the pending machine
    while not a.d.find_elements(By.CSS_SELECTOR, "tr.registration"):
        if time.monotonic() > deadline:
            raise AssertionError("no pending registration on the machines page")
        time.sleep(0.5)
        a.go("/admin/machines")
    row = a.d.find_element(By.CSS_SELECTOR, "tr.registration")
    out["pending_row"] = row.text
    Select(row.find_element(By.NAME, "user")).select_by_visible_text(args["user"])
    a.shot("03-pending")
    row.find_element(By.CSS_SELECTOR, "button.approve").click()
    out["approved"] = a.flash("machine approved")
    a.shot("04-approved")

    a.go(f"/admin/machines?q={args['router']}")  # approve the route the official client offers
    a.d.find_element(By.LINK_TEXT, args["router"]).click()
    box = a.wait.until(ec.presence_of_element_located(
        (By.CSS_SELECTOR, f"input[name=route][value='{args['route']}']")))  # fmt: skip
    if not box.is_selected():
        box.click()
    a.d.find_element(By.ID, "save-routes").click()
    out["route"] = a.flash("route approvals saved")
    a.shot("05-machine-routes")

    a.go("/admin/keys")
    form = a.d.find_element(By.ID, "create-key")
    Select(form.find_element(By.NAME, "user")).select_by_visible_text(args["user"])
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    out["preauth_key"] = a.wait.until(
        ec.presence_of_element_located((By.ID, "secret-value"))).text  # fmt: skip
    a.shot("06-preauth-key")
    for page in ("users", "apikeys", "dns", "settings"):
        a.go(f"/admin/{page}")
        a.shot(f"07-{page}")

    a.go("/admin/policy")
    a.type_policy(args["invalid_policy"])
    status = (By.ID, "policy-status")
    a.wait.until(lambda d: "error" in (d.find_element(*status).get_attribute("class") or ""))
    out["typed_invalid"] = a.d.find_element(*status).text
    a.shot("08-policy-as-you-type")
    a.d.find_element(By.ID, "save-policy").click()
    out["refused"] = a.wait.until(ec.presence_of_element_located((By.ID, "policy-error"))).text
    a.shot("09-policy-refused")
    a.type_policy(args["valid_policy"])
    a.wait.until(ec.text_to_be_present_in_element(status, "valid"))
    out["typed_valid"] = a.d.find_element(*status).text
    a.d.find_element(By.ID, "save-policy").click()
    out["saved"] = a.flash("policy saved")
    a.shot("10-policy-saved")
    return out


def phase2(a: Admin, args: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    a.sign_in(args["api_key"])
    a.go("/admin/policy")
    button = a.d.find_element(By.CSS_SELECTOR, f"button.rollback[data-version='{args['back_to']}']")
    button.click()
    a.wait.until(ec.alert_is_present()).accept()  # "Put version N back in force?"
    out["rolled_back"] = a.flash("rolled back")
    a.shot("11-policy-rolled-back")
    a.go(f"/admin/policy?diff={args['diff']}")
    out["diff"] = a.d.find_element(By.ID, "policy-diff").text
    a.shot("12-policy-diff")
    a.go(f"/admin/policy?src={args['src']}&dst={args['router']}&port=8080&proto=tcp")
    out["reach"] = a.d.find_element(By.ID, "reach-result").text
    a.shot("13-reach-tester")
    a.go("/admin/audit")
    out["audit"] = a.text()
    a.shot("14-audit-log")
    a.d.find_element(By.ID, "logout").click()
    a.wait.until(ec.presence_of_element_located((By.ID, "api_key")))
    a.go("/admin/machines")
    a.wait.until(ec.presence_of_element_located((By.ID, "api_key")))
    out["after_logout"] = a.d.current_url
    return out


def main(args: dict[str, Any]) -> dict[str, Any]:
    t0 = time.monotonic()
    home = tempfile.mkdtemp(prefix="chromium-")
    os.environ["HOME"] = home
    trust_ca(home, args["ca"])
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--no-first-run", "--window-size=1400,1000",
                f"--user-data-dir={home}/profile"):  # fmt: skip
        opts.add_argument(arg)
    driver = webdriver.Chrome(options=opts, service=Service(CHROMEDRIVER))
    shots = Path(args["shots"])
    shots.mkdir(parents=True, exist_ok=True)
    a = Admin(driver, args["url"], shots)
    try:
        driver.set_page_load_timeout(STEP_S)
        out = phase1(a, args) if args["phase"] == 1 else phase2(a, args)
        out["seconds"] = round(time.monotonic() - t0, 2)
        return out
    except Exception:
        a.shot(f"failed-phase{args['phase']}")
        print(f"at {driver.current_url}: {driver.title!r}\n{a.text()[:1500]}", file=sys.stderr)
        raise
    finally:
        driver.quit()


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))))
