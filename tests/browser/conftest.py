"""The web page in Debian's Chromium (Playwright), against the real stack: Redis, a Celery worker, the API.

The stack is the integration suite's `Stack` class (one per session here, with a single pool slot so that
timings are predictable); the browser is `/usr/bin/chromium`, never a downloaded one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from tests.integration.conftest import REPO, Stack

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
ARTIFACTS = REPO / "test-artifacts" / "browser"
DESKTOP = {"width": 1280, "height": 900}
# A key long enough for the settings' check (16 characters or more).
API_KEY = "browser-test-key-0123456789"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if Path(str(item.fspath)).is_relative_to(here):
            item.add_marker(pytest.mark.browser)


@pytest.fixture(scope="session")
def browser_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = Stack(tmp_path_factory.mktemp("browser-stack"))
    try:
        stack.start_worker("browser", concurrency=1)
        yield stack
    finally:
        stack.close()


@pytest.fixture(scope="session")
def page_url(browser_stack: Stack) -> str:
    """The API (which serves the page at `/`) with API keys off."""
    return browser_stack.start_api()


@pytest.fixture(scope="session")
def keyed_url(browser_stack: Stack) -> str:
    """A second API on the same Redis and worker, with API keys on."""
    return browser_stack.start_api(api_keys=API_KEY)


@pytest.fixture(scope="session")
def workerless_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An API on a Redis that no worker serves: its jobs stay queued."""
    stack = Stack(tmp_path_factory.mktemp("workerless-stack"))
    try:
        yield stack.start_api()
    finally:
        stack.close()


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run `make system-deps` (Debian's chromium package)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


Shot = Callable[[Page, str], Path]


@pytest.fixture
def shot(request: pytest.FixtureRequest) -> Shot:
    """Save a full-page screenshot as test-artifacts/browser/<test>-<label>.png."""

    def take(page: Page, label: str) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{request.node.name}-{label}.png"
        page.screenshot(path=str(path), full_page=True)
        return path

    return take


def open_page(browser: Browser, base_url: str, errors: list[str], **context: object) -> Page:
    """A fresh context (own storage, downloads on) with the page loaded and its limits read."""
    new_context = browser.new_context(
        base_url=base_url, accept_downloads=True, **{"viewport": DESKTOP, **context}
    )
    page = new_context.new_page()
    page.set_default_timeout(30_000)
    page.on("pageerror", lambda error: errors.append(f"{error}"))
    page.goto("/")
    # /v1/config has answered once the model list is filled in.
    page.wait_for_function("document.querySelectorAll('#model option').length > 0")
    return page


@pytest.fixture
def page(browser: Browser, page_url: str, shot: Shot) -> Iterator[Page]:
    """The page at desktop width; fails the test on any uncaught JavaScript error."""
    errors: list[str] = []
    opened = open_page(browser, page_url, errors)
    yield opened
    shot(opened, "end")
    opened.context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"
