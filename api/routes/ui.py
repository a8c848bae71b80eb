"""The web UI: the built frontend (frontend/dist, or SHARDLINE_UI_DIR) served at /, after every API route.

Unknown paths under the API's own prefixes keep their JSON 404s; a missing build answers a page saying
how to build it (`make ui`)."""

from __future__ import annotations

import os
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

UI_DIR = Path(os.environ.get("SHARDLINE_UI_DIR") or Path(__file__).resolve().parents[2] / "frontend" / "dist")
NOT_BUILT = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Shardline</title></head><body>
<h1>Shardline</h1><p>The web UI is not built yet: run <code>make ui</code> (or <code>make up</code>, which builds it),
then reload. The API works meanwhile: see <a href="/docs">/docs</a>.</p></body></html>"""


def is_ui_path(path: str) -> bool:
    """Paths of the UI's own files, open without an API key (the API calls they make still need one)."""
    return path in ("/", "/index.html", "/favicon.ico") or path.startswith("/assets/")


def mount_ui(app: FastAPI) -> None:
    if (UI_DIR / "index.html").is_file():
        app.mount("/", StaticFiles(directory=UI_DIR, html=True), name="ui")
        return

    @app.get("/", include_in_schema=False)
    async def not_built() -> HTMLResponse:
        return HTMLResponse(NOT_BUILT)
