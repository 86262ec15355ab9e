"""
A real browser for the web tests: Debian's headless Chromium, driven by
Selenium through Debian's chromedriver (no driver download: the paths are
given). C{TXGEAR_REQUIRE_PEERS=1} turns a missing browser into a failure.
"""
from __future__ import annotations

import os
import shutil
from typing import Any, Iterator, List, Optional

import pytest

from tests._peers import requirePeer

_CHROMIUM = ("chromium", "chromium-browser", "google-chrome")
_DRIVER = ("chromedriver",)


def _find(names: tuple) -> Optional[str]:
    for name in names:
        path = shutil.which(name) or (f"/usr/bin/{name}" if os.path.exists(f"/usr/bin/{name}")
                                      else None)
        if path:
            return path
    return None


def headlessChromium(width: int = 1280, height: int = 900) -> Any:
    """
    A Selenium WebDriver for headless Chromium, its browser log (console
    messages) kept; skips (or fails under TXGEAR_REQUIRE_PEERS=1) when
    Chromium, chromedriver or Selenium is missing.
    """
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        requirePeer(False, "Selenium (pip install selenium)")
    browser, driver = _find(_CHROMIUM), _find(_DRIVER)
    requirePeer(browser is not None and driver is not None,
                "Chromium and chromedriver (Debian: apt install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     f"--window-size={width},{height}", "--no-first-run",
                     "--disable-extensions", "--disable-background-networking"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(executable_path=driver), options=options)


def consoleErrors(driver: Any) -> List[dict]:
    """The browser console's messages of level SEVERE since the last call."""
    return [entry for entry in driver.get_log("browser") if entry.get("level") == "SEVERE"]


@pytest.fixture()
def browser() -> Iterator[Any]:
    """A headless Chromium for one test, quit afterwards."""
    driver = headlessChromium()
    try:
        yield driver
    finally:
        driver.quit()


__all__ = ["browser", "consoleErrors", "headlessChromium"]
