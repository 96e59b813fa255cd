"""A real headless Chromium for UI tests: Debian's `chromium` driven by Playwright (no browser
download works here, so Playwright's own builds are never used), signed in to Airflow."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"


def _ensure_chromium() -> None:
    """Install Debian's chromium when it is missing (we run as root on these machines)."""
    if CHROMIUM.exists() or shutil.which("apt-get") is None:
        return
    for argv in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium"]):
        subprocess.run(argv, capture_output=True, check=False, timeout=900)


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    _ensure_chromium()
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing and could not be installed: the browser tests need Debian's "
            "package 'chromium' (apt-get install -y chromium)"
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        found = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield found
        found.close()


def airflow_login(env: dict[str, str]) -> tuple[str, str]:
    """The admin login standalone generated for the simple auth manager."""
    path = Path(env["AIRFLOW_HOME"]) / "simple_auth_manager_passwords.json.generated"
    return next(iter(json.loads(path.read_text()).items()))


@pytest.fixture
def ui_page(browser, airflow_scheduler) -> Iterator[Any]:
    """A page signed in to the session's Airflow standalone through its login form."""
    base = airflow_scheduler["AIRFLOW__API__BASE_URL"]
    user, password = airflow_login(airflow_scheduler)
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.goto(base + "/")
    page.fill("input[name=username]", user, timeout=60_000)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    page.get_by_role("link", name="Dags").first.wait_for(timeout=60_000)
    yield page
    context.close()
