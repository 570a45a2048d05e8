"""A real headless Chromium (Debian's chromium + chromium-driver) driven through Selenium,
with a private profile in the test's temp dir; quit (browser and driver) at teardown."""

from __future__ import annotations

import os
import shutil

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


def start_browser(profile: str, *, javascript: bool = True):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1280,900"):
        opts.add_argument(arg)
    if not javascript:
        opts.add_experimental_option(
            "prefs", {"profile.managed_default_content_settings.javascript": 2})
    # The driver is given: Selenium Manager never downloads one.
    service = Service(executable_path=CHROMEDRIVER, log_output=os.path.join(profile, "driver.log"))
    return webdriver.Chrome(options=opts, service=service)


@pytest.fixture
def browser(tmp_path):
    profile = str(tmp_path / "chromium-profile")
    os.makedirs(profile)
    driver = start_browser(profile)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def browser_without_js(tmp_path):
    profile = str(tmp_path / "chromium-profile-nojs")
    os.makedirs(profile)
    driver = start_browser(profile, javascript=False)
    try:
        yield driver
    finally:
        driver.quit()
