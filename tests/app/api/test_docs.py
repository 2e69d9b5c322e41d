"""The documentation pages and their assets, served by the service (app/api/docs.py); the browser test that
renders them is tests/browser/test_docs_pages.py."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from app.api.docs import VENDOR
from app.main import create_app
from tests.app.payloads import make_settings

KEYS = "docs-test-reader-key-0001:read"
CONTENT_TYPES = {".js": "javascript", ".css": "text/css", ".png": "image/png"}


@pytest.fixture(scope="module")
def keyed() -> TestClient:
    """The app with API keys set (no lifespan: the pages need no model)."""
    return TestClient(create_app(make_settings(api_keys=KEYS)))


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_a_page_loads_only_the_services_own_assets_and_needs_no_key(keyed: TestClient, page: str) -> None:
    response = keyed.get(page)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    urls = re.findall(r"""(?:src|href|url)\s*[=:]\s*['"]([^'"]+)['"]""", response.text)
    assert urls and "/openapi.json" in urls, urls
    external = [url for url in urls if not url.startswith("/")]
    assert not external, f"{page} loads from elsewhere: {external}"
    for url in urls:
        answer = keyed.get(url)
        assert answer.status_code == 200, url
        suffix = url[url.rindex(".") :]
        assert CONTENT_TYPES.get(suffix, "json") in answer.headers["content-type"], url


def test_the_assets_are_the_vendored_files_with_their_licences(keyed: TestClient) -> None:
    files = sorted(path.relative_to(VENDOR).as_posix() for path in VENDOR.glob("*/*"))
    for folder in ("swagger-ui", "redoc"):
        assert f"{folder}/LICENSE" in files
    for name in files:
        response = keyed.get(f"/docs/assets/{name}")
        assert response.status_code == 200 and response.content == (VENDOR / name).read_bytes(), name
    assert keyed.get("/docs/assets/redoc/nothing.js").status_code == 404
    assert keyed.get("/docs/assets/../api/docs.py").status_code == 404
