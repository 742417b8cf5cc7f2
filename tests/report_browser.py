"""Open a campaign's report.html in headless Chromium (Debian's chromium + chromium-driver,
driven by selenium) and say what a reader would see: console errors, each image's natural
size and the leaderboard's rows. Offline: the page must need no network."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass
class Page:
    errors: list[str]  # console messages at SEVERE level (JS errors, failed loads)
    images: list[tuple[int, int]]  # (naturalWidth, naturalHeight) of every <img>
    rows: int  # body rows of the leaderboard table
    title: str


def open_report(path: str | Path) -> Page:
    """Load `path` as a file:// page and read it back. Skips when Chromium is absent (CI
    installs it: .ci/run)."""
    chromium, driver_bin = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver_bin:
        pytest.skip("needs Debian's chromium and chromium-driver (apt-get install -y chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--no-first-run", "--disable-background-networking", "--proxy-server=127.0.0.1:9"):
        opts.add_argument(arg)  # the proxy: any request off this machine fails instead of leaving it
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    browser = webdriver.Chrome(service=Service(driver_bin), options=opts)
    try:
        browser.get(Path(path).resolve().as_uri())
        browser.execute_script("return document.readyState")
        images = [(int(i.get_property("naturalWidth")), int(i.get_property("naturalHeight")))
                  for i in browser.find_elements(By.TAG_NAME, "img")]
        rows = len(browser.find_elements(By.CSS_SELECTOR, "table tbody tr.trial"))
        errors = [e["message"] for e in browser.get_log("browser") if e.get("level") == "SEVERE"]
        return Page(errors, images, rows, browser.title)
    finally:
        browser.quit()
