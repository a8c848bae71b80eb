"""The web UI: the built frontend (frontend/dist, or SHARDLINE_UI_DIR) served at / and /assets/.

A missing build answers a page saying how to build it (`make ui`)."""

from __future__ import annotations

import os
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles

UI_DIR = Path(os.environ.get("SHARDLINE_UI_DIR") or Path(__file__).resolve().parents[2] / "frontend" / "dist")
NOT_BUILT = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Shardline</title></head><body>
<h1>Shardline</h1><p>The web UI is not built yet: run <code>make ui</code> (or <code>make up</code>, which builds it),
then reload. The API works meanwhile: see <a href="/docs">/docs</a>.</p></body></html>"""


def is_ui_path(path: str) -> bool:
    """Paths of the UI's own files, open without an API key (the API calls they make still need one)."""
    return path == "/" or path.startswith("/assets/")


def mount_ui(app: FastAPI) -> None:
    """GET / (the page) and /assets/* (its scripts and styles) only: every other path stays the API's, with its
    JSON 404 and 405 answers."""
    index = UI_DIR / "index.html"

    @app.get("/", include_in_schema=False, response_model=None)
    async def page() -> FileResponse | HTMLResponse:
        return FileResponse(index) if index.is_file() else HTMLResponse(NOT_BUILT)

    app.mount("/assets", StaticFiles(directory=UI_DIR / "assets", check_dir=False), name="ui-assets")
