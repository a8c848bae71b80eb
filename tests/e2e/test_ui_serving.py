"""How the API serves the web UI (no processes started): the build at / after every API route, unknown API
routes keep their JSON 404s, a missing build says how to make it, and the UI's files need no API key."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from api.routes import ui
from protos.config import parse_config

INDEX = "<!doctype html><html><body><div id=root></div><script src=/assets/app-1a2b.js></script></body></html>"


def app_client(monkeypatch: pytest.MonkeyPatch, ui_dir: Path, keys: tuple[str, ...] = ()) -> TestClient:
    monkeypatch.setattr(ui, "UI_DIR", ui_dir)
    monkeypatch.delenv("SHARDLINE_API_KEYS", raising=False)
    config = parse_config({"model_name": "m", "models": [{"name": "m"}],
                           "nodes": [{"id": "n1", "address": "127.0.0.1:1"}],
                           "api": {"api_keys": list(keys)}})
    # no `with`: the lifespan (backend connections) does not run; a loopback Host, as a local browser sends
    return TestClient(create_app(config), base_url="http://localhost")


@pytest.fixture
def built(tmp_path: Path) -> Path:
    (tmp_path / "assets").mkdir()
    (tmp_path / "index.html").write_text(INDEX)
    (tmp_path / "assets" / "app-1a2b.js").write_text("console.log('ui')")
    return tmp_path


@pytest.fixture
def client(monkeypatch: pytest.MonkeyPatch, built: Path) -> Iterator[TestClient]:
    yield app_client(monkeypatch, built)


def test_the_build_is_served_at_the_root(client: TestClient) -> None:
    for path in ("/", "/index.html"):
        r = client.get(path)
        assert r.status_code == 200 and r.text == INDEX and r.headers["content-type"].startswith("text/html")
        assert r.headers["cache-control"] == "no-cache"
    assert client.head("/").status_code == 200
    r = client.get("/assets/app-1a2b.js")
    assert r.status_code == 200 and r.text == "console.log('ui')"
    assert "immutable" in r.headers["cache-control"]


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/api/nope"), ("POST", "/api/nope"), ("GET", "/v1/nope"), ("POST", "/v1/nope"), ("DELETE", "/v1/x/y"),
    ("GET", "/nope"), ("GET", "/assets/missing.js"), ("GET", "/assets/..%2f..%2findex.html"),
])
def test_unknown_routes_keep_their_json_404(client: TestClient, method: str, path: str) -> None:
    r = client.request(method, path, json={} if method == "POST" else None)  # a body must be JSON (else 415)
    assert r.status_code == 404, r.text
    assert r.headers["content-type"] == "application/json"
    assert r.json()["error"]["type"] == "not_found_error"


def test_api_routes_still_answer(client: TestClient) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    assert "/api/model/stream" in client.get("/openapi.json").json()["paths"]
    assert "/" not in client.get("/openapi.json").json()["paths"]
    assert client.get("/docs").status_code == 200
    assert client.get("/metrics").status_code == 200
    assert client.delete("/api/model/stream").status_code == 405  # a known route, wrong method


def test_a_missing_build_says_how_to_make_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    client = app_client(monkeypatch, tmp_path / "dist")
    r = client.get("/")
    assert r.status_code == 200 and "make ui" in r.text
    assert client.get("/assets/app.js").status_code == 404
    (tmp_path / "dist").mkdir()  # built while the API runs: served without a restart
    (tmp_path / "dist" / "index.html").write_text(INDEX)
    assert client.get("/").text == INDEX


def test_with_api_keys_the_ui_files_are_open_and_api_calls_are_not(monkeypatch: pytest.MonkeyPatch,
                                                                  built: Path) -> None:
    client = app_client(monkeypatch, built, keys=("k1",))
    assert client.get("/").text == INDEX
    assert client.get("/assets/app-1a2b.js").status_code == 200
    for path in ("/v1/models", "/api/cluster"):
        r = client.get(path)
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    assert client.post("/api/model/stream", json={"text": "hi"}).status_code == 401
    assert client.get("/api/nope").status_code == 401  # unknown API paths do not leak without a key either
    assert client.get("/health").status_code == 200
