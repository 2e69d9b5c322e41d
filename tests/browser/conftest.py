"""Browser tests: the service's pages rendered by a real headless Chromium, driven by Playwright.

The browser is the system's Chromium (Debian package ``chromium``), not one that ``playwright install``
downloads: that needs the internet, which a closed network lacks and these pages must do without. Every
request a page makes to anything but the loopback is aborted and recorded, so that a page that reaches for
a CDN or a font shows it.

Without Chromium the tests fail under CI (``CI`` set; ``.ci/run`` installs it) and are skipped elsewhere,
which the run says once, before the first test.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Browser, Page, Route, sync_playwright

# where Debian, Ubuntu and Google put it
CHROMIUM = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
MISSING = "Chromium is not installed (`apt-get install chromium`; .ci/run installs it)"
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def chromium() -> str | None:
    """The path of the system's Chromium, or None."""
    return next(filter(None, map(shutil.which, CHROMIUM)), None)


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "browser: renders a page in headless Chromium (tests/browser)")


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Marks ``browser`` every test that uses the browser, so that ``-m "not browser"`` leaves them out."""
    for item in items:
        if "browser" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.browser)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Say once, before the first test, that the browser tests will be skipped, and why."""
    browser_tests = [item for item in session.items if item.get_closest_marker("browser")]
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if browser_tests and chromium() is None and not in_ci() and reporter is not None:
        reporter.write_line(f"skipping {len(browser_tests)} browser tests: {MISSING}", yellow=True, bold=True)


@pytest.fixture(scope="package")
def browser() -> Iterator[Browser]:
    """One headless Chromium for the tests of this folder, closed after them: while it runs, Playwright's
    sync API holds the thread's event loop, and an asyncio test would find it running (so the tests here
    are plain functions)."""
    path = chromium()
    if path is None:
        if in_ci():
            pytest.fail(MISSING)
        pytest.skip(MISSING)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=path)
        try:
            yield browser
        finally:
            browser.close()


@dataclass
class OfflinePage:
    """A fresh page that reaches nothing but the loopback."""

    page: Page
    outside: list[str] = field(default_factory=list)  # the URLs it asked for beyond the loopback, aborted
    errors: list[str] = field(default_factory=list)  # its uncaught script errors


@pytest.fixture
def offline_page(browser: Browser) -> Iterator[OfflinePage]:
    """A page in a context of its own (no cookies or storage from other tests), closed after the test."""
    context = browser.new_context()
    context.set_default_timeout(30_000)  # a busy test machine renders the big bundles slowly
    offline = OfflinePage(context.new_page())

    def only_loopback(route: Route) -> None:
        if urlsplit(route.request.url).hostname in LOOPBACK:
            route.continue_()
        else:
            offline.outside.append(route.request.url)
            route.abort("blockedbyclient")

    context.route("**/*", only_loopback)
    offline.page.on("pageerror", lambda error: offline.errors.append(str(error)))
    try:
        yield offline
    finally:
        context.close()
