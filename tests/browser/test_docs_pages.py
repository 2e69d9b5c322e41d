"""/docs (Swagger UI) and /redoc (ReDoc) rendered by headless Chromium from a real `cpe serve` with API keys
set, on a network that reaches nothing but the service: each page lists every operation of /openapi.json."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from playwright.sync_api import expect

from tests.browser.conftest import OfflinePage
from tools.process import ServerProcess, serving

# ReDoc's "API docs by Redocly" link shows this image, which ReDoc hides when it cannot load: the one
# request beyond the service a page may make
REDOC_LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg"


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    settings = {
        "CPE_DEVICE": "cpu",
        "CPE_MODELS": "lstm",
        "CPE_MODEL": "lstm",
        "CPE_API_KEYS": "browser-test-reader-0001:read",  # the pages and the schema need no key
    }
    with serving(settings) as (server,):
        yield server


def operations(server: ServerProcess) -> dict[str, tuple[str, str]]:
    """operationId -> (method, path) of every operation in the server's /openapi.json."""
    schema = httpx.get(f"{server.url}/openapi.json").json()
    return {
        operation["operationId"]: (method.upper(), path)
        for path, item in schema["paths"].items()
        for method, operation in item.items()
    }


def test_swagger_ui_lists_every_operation_offline(server: ServerProcess, offline_page: OfflinePage) -> None:
    expected = set(operations(server).values())
    assert ("POST", "/v1/predict") in expected
    page = offline_page.page
    page.goto(f"{server.url}/docs")
    expect(page.locator(".opblock")).to_have_count(len(expected))
    listed = page.eval_on_selector_all(
        ".opblock",
        """blocks => blocks.map(block => [
            block.querySelector('.opblock-summary-method').textContent,
            block.querySelector('.opblock-summary-path').dataset.path,
        ])""",
    )
    assert {tuple(operation) for operation in listed} == expected
    assert offline_page.outside == [] and offline_page.errors == []


def test_redoc_lists_every_operation_offline(server: ServerProcess, offline_page: OfflinePage) -> None:
    expected = operations(server)
    page = offline_page.page
    page.goto(f"{server.url}/redoc")
    # ReDoc's deep links: a section "tag/<tag>/operation/<operationId>" for each operation
    sections = page.locator("[data-section-id*='/operation/']")
    expect(sections).to_have_count(len(expected))
    ids = sections.evaluate_all("sections => sections.map(s => s.dataset.sectionId.split('/operation/')[1])")
    assert set(ids) == set(expected)
    predict = next(id for id, operation in expected.items() if operation == ("POST", "/v1/predict"))
    expect(page.locator(f"[data-section-id$='/operation/{predict}']")).to_contain_text("/v1/predict")
    assert set(offline_page.outside) <= {REDOC_LOGO} and offline_page.errors == []
