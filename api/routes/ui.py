"""The web UI: the built frontend (frontend/dist, or SHARDLINE_UI_DIR) served at /, after every API route.

Only ``GET``/``HEAD`` of ``/``, ``/index.html`` and ``/assets/...`` are the UI's; every other path (all of
``/api`` and ``/v1`` included) is left to the API, so unknown routes keep their JSON 404s. The build is looked up
per request: a build made while the API runs is served without a restart, and a missing build answers a page
saying how to make it (``make ui``). The UI's files need no API key (the API calls the page makes still do).
"""

from __future__ import annotations

import os
from pathlib import Path

from fastapi import FastAPI
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, Response

UI_DIR = Path(os.environ.get("SHARDLINE_UI_DIR") or Path(__file__).resolve().parents[2] / "frontend" / "dist")
INDEX_PATHS = ("/", "/index.html")
ASSETS_PREFIX = "/assets/"
NOT_BUILT = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Shardline: web UI not built</title></head>
<body style="font-family: system-ui, sans-serif; max-width: 40rem; margin: 2rem auto; padding: 0 1rem">
<h1>Shardline</h1>
<p>The web UI is not built yet. Run <code>make ui</code> (or <code>make up</code>, which builds it) in the
repository, then reload this page.</p>
<p>The API works meanwhile: see <a href="/docs">/docs</a>.</p>
</body></html>
"""


def is_ui_path(path: str) -> bool:
    """Paths of the UI's own files, open without an API key (the API calls they make still need one)."""
    return path in INDEX_PATHS or path.startswith(ASSETS_PREFIX)


async def index(request: Request) -> Response:
    page = UI_DIR / "index.html"
    if not page.is_file():
        return HTMLResponse(NOT_BUILT, headers={"Cache-Control": "no-cache"})
    return FileResponse(page, media_type="text/html", headers={"Cache-Control": "no-cache"})


async def asset(request: Request) -> Response:
    """A file of the build's assets folder; names carry a content hash, so they may be cached for good."""
    root = (UI_DIR / "assets").resolve()
    try:
        path = (root / request.path_params["path"]).resolve()
        found = path.is_relative_to(root) and path.is_file()
    except (OSError, ValueError):  # a NUL byte (ValueError), a name too long for the file system (ENAMETOOLONG)
        found = False
    if not found:
        raise HTTPException(404)  # the API's JSON 404
    return FileResponse(path, headers={"Cache-Control": "public, max-age=31536000, immutable"})


def mount_ui(app: FastAPI) -> None:
    """Adds the UI's routes; call it after every API route."""
    for path in INDEX_PATHS:
        app.add_route(path, index, methods=["GET"], include_in_schema=False)  # Starlette adds HEAD
    app.add_route(ASSETS_PREFIX + "{path:path}", asset, methods=["GET"], include_in_schema=False)
