"""GET /dashboard: the live page of the flows, their forecasts against what happened, and the route groups.

The page is three static files (``app/static/dashboard/``) and the vendored uPlot chart library
(``app/static/vendor/uplot/``, see that folder's README for why uPlot), served as they are: no build step,
nothing fetched from beyond the service, so it works on a closed network. The page itself needs no API key:
it holds no data. Its script asks for a key when the API answers 401, keeps it for the tab
(``sessionStorage``) and sends it as ``X-API-Key`` to the HTTP API and as the ``api_key`` query parameter
to the WebSocket streams, the one way a browser can present a key on a socket (``app/auth.py``).

Every response of the page carries a Content Security Policy that allows scripts, styles and connections to
this origin only, and no inline script or ``eval``: what the page shows comes from the API as data, and
the policy keeps it from ever becoming code.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).resolve().parents[1] / "static"
PAGE = STATIC / "dashboard" / "index.html"
ASSETS = "/dashboard/assets"  # app/static/dashboard/: the page's script and style
VENDOR = "/dashboard/vendor/uplot"  # app/static/vendor/uplot/
# 'self' covers the same origin's ws:/wss: in connect-src (CSP level 3, as every current browser reads it)
POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
HEADERS = {
    "content-security-policy": POLICY,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-cache",  # revalidated on each visit: an upgrade's new page is seen at once
}

router = APIRouter(include_in_schema=False)


def install(app: FastAPI) -> None:
    """Serve the page and its assets on ``app``."""
    app.include_router(router)
    app.mount(ASSETS, StaticFiles(directory=STATIC / "dashboard"), name="dashboard-assets")
    app.mount(VENDOR, StaticFiles(directory=STATIC / "vendor" / "uplot"), name="dashboard-vendor")


@router.get("/dashboard")
async def dashboard() -> FileResponse:
    """The live page."""
    return FileResponse(PAGE, media_type="text/html; charset=utf-8", headers=HEADERS)
