"""The remaining routes through the app with a fake backend: /health, /ready, /metrics, /v1/models,
/api/tokenize, /api/detokenize, the web UI and the docs; that every route the app serves is tested here; and that
API keys guard what they should."""

from __future__ import annotations

import grpc
import pytest
from starlette.routing import Route

from api.routes import ui
from tests.unit.api.conftest import STARTED_AT, FakeApi, fake_api
from tests.unit.api.fakes import CONTEXT, MODEL, model_info

USER, ADMIN = "sk-user-0123", "sk-admin-4567"
# Every route the app serves, and the tests (in tests/unit/api/) that call it.
TESTED_ROUTES = {
    ("GET", "/health"), ("GET", "/ready"), ("GET", "/metrics"), ("GET", "/v1/models"),
    ("GET", "/v1/models/{model:path}"), ("POST", "/v1/chat/completions"), ("POST", "/v1/completions"),
    ("POST", "/api/model/process"), ("POST", "/api/model/stream"), ("POST", "/api/tokenize"),
    ("POST", "/api/detokenize"), ("GET", "/api/cluster"), ("GET", "/api/models"), ("POST", "/api/models"),
    ("DELETE", "/api/models/{name}"), ("POST", "/api/models/{name}/rebalance"), ("POST", "/api/nodes"),
    ("DELETE", "/api/nodes/{node_id}"), ("GET", "/"),
    ("GET", "/index.html"), ("GET", "/assets/{path:path}"), ("GET", "/openapi.json"), ("GET", "/docs"),
    ("GET", "/docs/oauth2-redirect"), ("GET", "/redoc"),
}


def test_every_route_the_app_serves_is_tested(api: FakeApi) -> None:
    served = {(method, r.path) for r in api.app.routes if isinstance(r, Route) for method in r.methods or ()
              if method != "HEAD"}
    assert served == TESTED_ROUTES


def test_health(api: FakeApi) -> None:
    r = api.client.get("/health")
    assert r.status_code == 200 and r.json() == {"status": "ok"}


def test_ready_when_a_one_token_probe_goes_through(api: FakeApi) -> None:
    r = api.client.get("/ready")
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "ready" and r.json()["models"][0]["model"] == MODEL
    probe = api.coordinator.generated[0]
    assert probe.prompt_ids == [2] and probe.max_tokens == 1 and probe.ignore_eos  # the model's EOS, one token


def test_not_ready_names_the_model_and_why_without_server_paths(api: FakeApi) -> None:
    api.coordinator.models_served[MODEL] = model_info(ready=False, state="unavailable",
                                                      reason="node n1: cannot read /srv/cache/m/model.safetensors")
    r = api.client.get("/ready")
    assert r.status_code == 503, r.text
    message = r.json()["error"]["message"]
    assert message.startswith("not ready: m: ") and "m/model.safetensors" in message and "/srv/cache" not in message
    assert r.json()["models"][0]["ready"] is False


def test_not_ready_without_a_coordinator(api: FakeApi) -> None:
    api.coordinator.list_error = grpc.StatusCode.UNAVAILABLE
    r = api.client.get("/ready")
    assert r.status_code == 503 and "the coordinator" in r.json()["error"]["message"]


def test_metrics_count_requests_by_route_template(api: FakeApi) -> None:
    api.client.get("/v1/models/m")
    r = api.client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    assert 'shardline_api_requests_total{method="GET",route="/v1/models/{model:path}",status="200"}' in r.text


def test_openai_models_list_and_one(api: FakeApi) -> None:
    api.coordinator.models_served["gone"] = model_info("gone", state="draining")
    r = api.client.get("/v1/models")
    assert r.status_code == 200, r.text
    assert r.json()["object"] == "list"
    assert [(m["id"], m["created"], m["max_model_len"]) for m in r.json()["data"]] == [(MODEL, STARTED_AT, CONTEXT)]
    assert api.client.get(f"/v1/models/{MODEL}").json()["id"] == MODEL
    r = api.client.get("/v1/models/gone")
    assert r.status_code == 404 and r.json()["error"]["param"] == "model"


def test_tokenize_and_detokenize(api: FakeApi) -> None:
    r = api.client.post("/api/tokenize", json={"text": "Hi"})
    assert r.json() == {"model": MODEL, "tokens": [72, 105], "count": 2, "max_context": CONTEXT}, r.text
    r = api.client.post("/api/detokenize", json={"tokens": [72, 105]})
    assert r.json() == {"model": MODEL, "text": "Hi"}, r.text


def test_tokenize_works_while_the_coordinator_is_down(api: FakeApi) -> None:
    api.coordinator.list_error = grpc.StatusCode.UNAVAILABLE
    r = api.client.post("/api/tokenize", json={"text": "Hi"})
    assert r.status_code == 200 and r.json()["max_context"] is None, r.text


@pytest.mark.parametrize(("code", "status", "param"), [(grpc.StatusCode.INVALID_ARGUMENT, 400, "tokens"),
                                                       (grpc.StatusCode.NOT_FOUND, 404, "model")])
def test_detokenize_errors_name_the_field(api: FakeApi, code: grpc.StatusCode, status: int, param: str) -> None:
    api.tokenizer.error = code
    r = api.client.post("/api/detokenize", json={"tokens": [1]})
    assert r.status_code == status and r.json()["error"]["param"] == param, r.text


def test_the_ui_page_and_its_assets(api: FakeApi) -> None:
    r = api.client.get("/")
    assert r.status_code == 200 and "make ui" in r.text  # not built yet
    (ui.UI_DIR / "assets").mkdir(parents=True)
    (ui.UI_DIR / "index.html").write_text("<html>shardline</html>")
    (ui.UI_DIR / "assets" / "app.js").write_text("let x")
    assert api.client.get("/index.html").text == "<html>shardline</html>"
    r = api.client.get("/assets/app.js")
    assert r.text == "let x" and "immutable" in r.headers["cache-control"]
    assert api.client.get("/assets/%2e%2e/index.html").status_code == 404  # outside the assets folder
    assert api.client.get("/assets/missing.js").status_code == 404


def test_docs_and_schema(api: FakeApi) -> None:
    schema = api.client.get("/openapi.json").json()
    assert "/v1/chat/completions" in schema["paths"] and "ChatCompletionChunk" in schema["components"]["schemas"]
    for path in ("/docs", "/docs/oauth2-redirect", "/redoc"):
        assert api.client.get(path).status_code == 200, path


def test_an_unknown_route_is_a_json_404(api: FakeApi) -> None:
    r = api.client.get("/api/nothing")
    assert r.status_code == 404 and "no route GET /api/nothing" in r.json()["error"]["message"]


# API keys (ApiKeyMiddleware), on the app with its dependencies swapped

@pytest.fixture
def keyed() -> FakeApi:
    return fake_api(api_keys=[USER], admin_keys=[ADMIN])


@pytest.mark.parametrize(("method", "path"), [("GET", "/ready"), ("GET", "/v1/models"), ("GET", "/api/cluster"),
                                              ("POST", "/api/tokenize"), ("GET", "/api/models")])
def test_with_keys_routes_need_one(keyed: FakeApi, method: str, path: str) -> None:
    body = {"text": "Hi"} if method == "POST" else None
    r = keyed.client.request(method, path, json=body)
    assert r.status_code == 401 and r.headers["WWW-Authenticate"] == "Bearer", r.text
    assert "missing API key" in r.json()["error"]["message"]
    wrong = keyed.client.request(method, path, json=body, headers={"Authorization": "Bearer sk-wrong"})
    assert wrong.status_code == 401 and "invalid API key" in wrong.json()["error"]["message"]
    for key in (USER, ADMIN):
        assert keyed.client.request(method, path, json=body, headers={"Authorization": f"Bearer {key}"}
                                    ).status_code == 200


def test_with_keys_health_metrics_and_the_ui_stay_open(keyed: FakeApi) -> None:
    for path in ("/health", "/metrics", "/"):
        assert keyed.client.get(path).status_code == 200, path


@pytest.mark.parametrize(("method", "path", "body"), [
    ("POST", "/api/models", {"name": "tiny"}), ("DELETE", "/api/models/m", None),
    ("POST", "/api/nodes", {"id": "n2", "address": "127.0.0.1:2"}), ("DELETE", "/api/nodes/n1", None)])
def test_admin_routes_need_an_admin_key(keyed: FakeApi, method: str, path: str, body: dict | None) -> None:
    r = keyed.client.request(method, path, json=body, headers={"Authorization": f"Bearer {USER}"})
    assert r.status_code == 403 and r.json()["error"]["type"] == "permission_error", r.text
    assert keyed.coordinator.admin_calls == []
    r = keyed.client.request(method, path, json=body, headers={"Authorization": f"Bearer {ADMIN}"})
    assert r.status_code in (200, 201), r.text
    assert len(keyed.coordinator.admin_calls) == 1


def test_generation_with_a_user_key(keyed: FakeApi) -> None:
    r = keyed.client.post("/v1/completions", json={"model": MODEL, "prompt": "Hi", "max_tokens": 2},
                          headers={"Authorization": f"Bearer {USER}"})
    assert r.status_code == 200 and r.json()["choices"][0]["text"] == "He", r.text
