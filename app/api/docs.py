"""GET /docs (Swagger UI) and /redoc (ReDoc): the API's documentation pages, with their scripts and styles.

FastAPI's own pages load Swagger UI and ReDoc from a CDN, which leaves them blank on a network without the
internet. These are the same pages (FastAPI's ``get_swagger_ui_html`` and ``get_redoc_html``) with the
assets served by the service from the copies in ``app/static/vendor/`` (see its README for the versions
and licences); the app is built with ``docs_url=None, redoc_url=None`` so that FastAPI adds no pages of
its own. Like ``/openapi.json``, the pages need no API key.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

VENDOR = Path(__file__).resolve().parents[1] / "static" / "vendor"
ASSETS = "/docs/assets"  # VENDOR's files, e.g. /docs/assets/redoc/redoc.standalone.js
# no badge from Swagger's online validator: it would send the schema's URL to validator.swagger.io
SWAGGER_UI_PARAMETERS = {"validatorUrl": None}

router = APIRouter(include_in_schema=False)


def install(app: FastAPI) -> None:
    """Serve the pages and their assets on ``app``."""
    app.include_router(router)
    app.mount(ASSETS, StaticFiles(directory=VENDOR), name="docs-assets")


@router.get("/docs")
async def swagger_ui(request: Request) -> HTMLResponse:
    """Swagger UI: every operation, with a form to try it."""
    root = _root_path(request)
    return get_swagger_ui_html(
        openapi_url=root + request.app.openapi_url,
        title=f"{request.app.title} - Swagger UI",
        swagger_js_url=f"{root}{ASSETS}/swagger-ui/swagger-ui-bundle.js",
        swagger_css_url=f"{root}{ASSETS}/swagger-ui/swagger-ui.css",
        swagger_favicon_url=f"{root}{ASSETS}/swagger-ui/favicon-32x32.png",
        swagger_ui_parameters=SWAGGER_UI_PARAMETERS,
    )


@router.get("/redoc")
async def redoc(request: Request) -> HTMLResponse:
    """ReDoc: the same schema as one readable page."""
    root = _root_path(request)
    return get_redoc_html(
        openapi_url=root + request.app.openapi_url,
        title=f"{request.app.title} - ReDoc",
        redoc_js_url=f"{root}{ASSETS}/redoc/redoc.standalone.js",
        redoc_favicon_url=f"{root}{ASSETS}/swagger-ui/favicon-32x32.png",
        with_google_fonts=False,  # the fonts would come from fonts.googleapis.com; the system's serve
    )


def _root_path(request: Request) -> str:
    """The prefix a proxy serves the app under (uvicorn's ``--root-path``), as FastAPI's own pages use it."""
    return str(request.scope.get("root_path", "")).rstrip("/")
