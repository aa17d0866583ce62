"""Sign in as a person would, in headless Chromium (Debian's chromium + chromium-driver, driven
with Selenium): open the login URL `up` printed, log in at the oidc-provider's form, consent,
confirm the machine on our page. Run inside a lab namespace:

    python browser_signin.py URL LOGIN CA_CERT

Prints one JSON line: the final page's title and text, and seconds taken. The lab CA is added to
a fresh profile's NSS database (``certutil``), as a user installs a private CA.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
STEP_S = 15  # a person waits this long for a page, at most


def trust_ca(home: str, ca_path: str) -> None:
    """Chromium on Linux trusts the CAs in $HOME/.pki/nssdb."""
    db = os.path.join(home, ".pki", "nssdb")
    os.makedirs(db)
    subprocess.run(["certutil", "-d", f"sql:{db}", "-N", "--empty-password"], check=True,
                   timeout=30)  # fmt: skip
    subprocess.run(["certutil", "-d", f"sql:{db}", "-A", "-t", "C,,", "-n", "lab-ca", "-i",
                    ca_path], check=True, timeout=30)  # fmt: skip


def sign_in(url: str, login: str, ca_path: str) -> dict[str, object]:
    t0 = time.monotonic()
    home = tempfile.mkdtemp(prefix="chromium-")
    os.environ["HOME"] = home
    trust_ca(home, ca_path)
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--no-first-run", f"--user-data-dir={home}/profile"):  # fmt: skip
        opts.add_argument(arg)
    driver = webdriver.Chrome(options=opts, service=Service(CHROMEDRIVER))
    try:
        driver.set_page_load_timeout(STEP_S)
        wait = WebDriverWait(driver, STEP_S)
        driver.get(url)
        # The provider's login form, then its consent form (the dev interactions).
        wait.until(ec.presence_of_element_located((By.NAME, "login"))).send_keys(login)
        driver.find_element(By.NAME, "password").send_keys("any")
        button = driver.find_element(By.CSS_SELECTOR, "button[type=submit]")
        button.click()
        for _ in range(3):  # consent (one prompt, or more); bounded
            wait.until(ec.staleness_of(button))
            if "/interaction/" not in driver.current_url:
                break
            button = wait.until(
                ec.element_to_be_clickable((By.CSS_SELECTOR, "button[type=submit]"))
            )
            button.click()
        confirm = driver.find_elements(By.ID, "confirm")
        if confirm:  # our page: "Add <host> to your account?"
            asked = driver.find_element(By.TAG_NAME, "body").text
            confirm[0].click()
            wait.until(lambda d: not d.find_elements(By.ID, "confirm"))
        else:
            asked = ""
        return {
            "title": driver.title,
            "text": driver.find_element(By.TAG_NAME, "body").text,
            "asked": asked,
            "url": driver.current_url,
            "seconds": round(time.monotonic() - t0, 2),
        }
    except Exception:
        body = driver.find_elements(By.TAG_NAME, "body")
        text = body[0].text[:600] if body else driver.page_source[:600]
        print(f"at {driver.current_url}: {driver.title!r}\n{text}", file=sys.stderr)
        raise
    finally:
        driver.quit()


if __name__ == "__main__":
    print(json.dumps(sign_in(sys.argv[1], sys.argv[2], sys.argv[3])))
