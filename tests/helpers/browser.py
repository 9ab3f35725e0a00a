"""A headless Chromium driven by selenium, for tests of report.html: the system's browser and driver (Debian:
apt-get install chromium chromium-driver; .ci/run installs them), never a downloaded one."""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
DRIVERS = ("chromedriver",)
INSTALL_HINT = "apt-get install chromium chromium-driver (as .ci/run does)"


def browser_expected() -> bool:
    """CI=true: the browser is meant to be there (.ci/run installs it), so a missing one fails the browser tests
    instead of skipping them."""
    return os.environ.get("CI", "").strip().lower() == "true"


def needs_browser(test):
    """Skip ``test`` where no headless browser can run, unless CI expects one: then it runs and fails, naming why."""
    import pytest

    reason = missing_browser()
    return pytest.mark.skipif(reason is not None and not browser_expected(), reason=f"no headless browser: {reason}")(test)


def missing_browser() -> str | None:
    """Why no headless browser can run here (None when one can)."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    if not any(shutil.which(b) for b in BROWSERS):
        return f"no Chromium on PATH ({INSTALL_HINT})"
    if not any(shutil.which(d) for d in DRIVERS):
        return f"no chromedriver on PATH ({INSTALL_HINT})"
    return None


@contextmanager
def headless_chromium(width: int = 1400, height: int = 1000):
    """A selenium Chrome driver on the system Chromium, headless, with the page's console log kept."""
    reason = missing_browser()
    if reason is not None:
        import pytest

        pytest.fail(f"no headless browser, and CI=true expects one: {reason}", pytrace=False)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = next(shutil.which(b) for b in BROWSERS if shutil.which(b))
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--disable-extensions", "--no-first-run", f"--window-size={width},{height}"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    os.environ.setdefault("SE_OFFLINE", "true")  # never let selenium-manager look for a driver online
    service = Service(next(shutil.which(d) for d in DRIVERS if shutil.which(d)))
    driver = webdriver.Chrome(service=service, options=options)
    try:
        yield driver
    finally:
        driver.quit()


def console_errors(driver) -> list[str]:
    """Console messages at level SEVERE since the last call (uncaught errors included)."""
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
