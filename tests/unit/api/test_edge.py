"""The API's HTTP edge without a cluster (TestClient, no lifespan): JSON-only bodies (415), the Host check while no
keys are set (421), admin keys for the routes that change the cluster (403), no 500 from asset paths or metadata,
no server paths in error messages, and `python -m api` refusing to listen beyond loopback without keys."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from api.__main__ import keys_problem
from api.errors import ApiError, install_handlers
from api.main import create_app
from api.routes import ui
from coordinator.registry import ModelRegistry, ModelRequest, RegistryError
from protos.config import ConfigError, ModelConfig, parse_config

USER, ADMIN = "sk-user-0123", "sk-admin-4567"
ENV = ("SHARDLINE_API_KEYS", "SHARDLINE_ADMIN_KEYS", "SHARDLINE_ALLOWED_HOSTS", "SHARDLINE_ALLOW_NO_KEYS")


def raw_config(tmp_path: Path, **api: object) -> dict:
    return {"model_name": "m", "models": [{"name": "m"}], "nodes": [{"id": "n1", "address": "127.0.0.1:1"}],
            "model_cache_dir": str(tmp_path / "cache"), "api": api}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(ui, "UI_DIR", tmp_path / "ui")  # no build: /assets/... is looked up in an empty folder


def client(tmp_path: Path, **api: object) -> TestClient:
    # no `with`: the lifespan (backend connections) does not run; the routes used fail validation before they
    # would call the backend, a placeholder
    app = create_app(parse_config(raw_config(tmp_path, **api)))
    app.state.backend = None
    return TestClient(app, base_url="http://localhost", raise_server_exceptions=False)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


# 415: a body must be declared JSON

@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x", "application/jsonx"])
def test_a_body_not_declared_json_gets_415(tmp_path: Path, content_type: str | None) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    r = client(tmp_path).post("/api/tokenize", content=b'{"text": "csrf"}', headers=headers)
    assert r.status_code == 415, r.text
    assert "Content-Type: application/json" in r.json()["error"]["message"]


@pytest.mark.parametrize("content_type", ["application/json", "application/json; charset=utf-8", "Application/JSON"])
def test_json_bodies_pass_with_parameters(tmp_path: Path, content_type: str) -> None:
    r = client(tmp_path).post("/api/tokenize", content=b"{}", headers={"Content-Type": content_type})
    assert r.status_code == 422, r.text  # reached validation: 'text' is missing


# 421: the Host check while no keys are set (DNS rebinding)

def test_a_foreign_host_gets_421_while_no_keys_are_set(tmp_path: Path) -> None:
    c = client(tmp_path)
    r = c.post("/api/tokenize", json={}, headers={"Host": "rebind.attacker.example"})
    assert r.status_code == 421, r.text
    message = r.json()["error"]["message"]
    assert "rebind.attacker.example" in message and "api.allowed_hosts" in message
    assert "SHARDLINE_ALLOWED_HOSTS" in message
    assert c.get("/assets/x.js", headers={"Host": "rebind.attacker.example:8000"}).status_code == 421


@pytest.mark.parametrize("host", ["localhost", "localhost:8000", "127.0.0.1", "127.0.0.1:5173", "[::1]:8000",
                                  "LOCALHOST."])
def test_loopback_hosts_pass(tmp_path: Path, host: str) -> None:
    assert client(tmp_path).post("/api/tokenize", json={}, headers={"Host": host}).status_code == 422


def test_probe_paths_answer_any_host(tmp_path: Path) -> None:
    r = client(tmp_path).get("/health", headers={"Host": "10.1.2.3:8000"})  # kubelet probes send the pod IP
    assert r.status_code == 200, r.text


def test_configured_and_env_hosts_pass(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHARDLINE_ALLOWED_HOSTS", "ui.example.test, other.test")
    c = client(tmp_path, allowed_hosts=["api.example.test"])
    for host in ("api.example.test", "ui.example.test:5173", "other.test"):
        assert c.post("/api/tokenize", json={}, headers={"Host": host}).status_code == 422, host
    assert c.post("/api/tokenize", json={}, headers={"Host": "third.test"}).status_code == 421


def test_with_keys_the_host_is_not_checked(tmp_path: Path) -> None:
    c = client(tmp_path, api_keys=[USER])
    r = c.post("/api/tokenize", json={}, headers={"Host": "api.example.test", **bearer(USER)})
    assert r.status_code == 422, r.text


# 403: admin keys for the routes that change the cluster

ADMIN_ROUTES = [("POST", "/api/models"), ("DELETE", "/api/models/m"), ("POST", "/api/nodes"),
                ("DELETE", "/api/nodes/n9")]


@pytest.mark.parametrize(("method", "path"), ADMIN_ROUTES)
def test_user_keys_get_403_on_admin_routes(tmp_path: Path, method: str, path: str) -> None:
    c = client(tmp_path, api_keys=[USER], admin_keys=[ADMIN])
    r = c.request(method, path, json={}, headers=bearer(USER))
    assert r.status_code == 403, r.text
    assert "SHARDLINE_ADMIN_KEYS" in r.json()["error"]["message"]
    assert r.json()["error"]["type"] == "permission_error"
    assert c.request(method, path, json={}).status_code == 401


def test_admin_keys_work_on_admin_and_user_routes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHARDLINE_ADMIN_KEYS", "sk-env-admin")
    c = client(tmp_path, api_keys=[USER], admin_keys=[ADMIN])
    for key in (ADMIN, "sk-env-admin"):
        assert c.post("/api/models", json={}, headers=bearer(key)).status_code == 422  # reached validation
        assert c.post("/api/nodes", json={}, headers=bearer(key)).status_code == 422
        assert c.post("/api/tokenize", json={}, headers=bearer(key)).status_code == 422
    assert c.post("/api/tokenize", json={}, headers=bearer(USER)).status_code == 422


def test_without_admin_keys_user_keys_still_cannot_change_the_cluster(tmp_path: Path) -> None:
    c = client(tmp_path, api_keys=[USER])
    r = c.post("/api/models", json={}, headers=bearer(USER))
    assert r.status_code == 403 and "none is configured" in r.json()["error"]["message"], r.text
    assert c.post("/api/tokenize", json={}, headers=bearer(USER)).status_code == 422


def test_without_any_key_admin_routes_are_open_on_loopback(tmp_path: Path) -> None:
    assert client(tmp_path).post("/api/models", json={}).status_code == 422


# no 500 from what a client sends

@pytest.mark.parametrize("path", ["/assets/%00", "/assets/a%00b.js", "/assets/" + "a" * 300,
                                  "/assets/" + "/".join(["b" * 255] * 20)])
def test_odd_asset_paths_are_404_not_500(tmp_path: Path, path: str) -> None:
    (tmp_path / "ui" / "assets").mkdir(parents=True)
    r = client(tmp_path).get(path)
    assert r.status_code == 404, r.text
    assert r.json()["error"]["type"] == "not_found_error"


@pytest.mark.parametrize("metadata", [b'{"x": "\\ud800"}', b'{"\\udfff": 1}', b'{"x": ["ok", {"y": "a\\udc00b"}]}'])
def test_a_lone_surrogate_in_metadata_is_422(tmp_path: Path, metadata: bytes) -> None:
    body = b'{"text": "Hi", "max_tokens": 1, "chat": false, "metadata": ' + metadata + b"}"
    r = client(tmp_path).post("/api/model/process", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["param"].startswith("metadata") and "surrogate" in r.json()["error"]["message"]


# no server paths in what reaches a client

def test_error_messages_never_show_the_model_cache_path(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    app = FastAPI()
    install_handlers(app, redact=(cache,))

    @app.get("/api-error")
    async def api_error() -> None:
        raise ApiError(400, f"tokenizer of 'x' failed: {cache}/x/tokenizer_config.json is not valid JSON")

    @app.get("/bug")
    async def bug() -> None:
        raise OSError(2, "No such file or directory", "/srv/secret/place")

    c = TestClient(app, raise_server_exceptions=False)
    message = c.get("/api-error").json()["error"]["message"]
    assert str(tmp_path) not in message and "x/tokenizer_config.json" in message
    r = c.get("/bug")
    assert r.status_code == 500 and "/srv/secret" not in r.text and "FileNotFoundError" in r.text


def test_a_model_missing_from_the_cache_is_named_without_the_cache_path(tmp_path: Path) -> None:
    config = parse_config(raw_config(tmp_path))

    async def add() -> None:  # the registry is made inside the loop it runs on
        await ModelRegistry(config).add(ModelRequest(ModelConfig(name="x", source="not-prepared")))

    with pytest.raises(RegistryError) as refused:
        asyncio.run(add())
    assert refused.value.code == grpc.StatusCode.NOT_FOUND
    assert "not-prepared" in str(refused.value) and str(tmp_path) not in str(refused.value)


# python -m api refuses to listen beyond loopback without keys

def test_listening_beyond_loopback_needs_keys_or_an_explicit_opt_in(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    api = parse_config(raw_config(tmp_path)).api
    problem = keys_problem("0.0.0.0", api)
    assert problem is not None
    assert "SHARDLINE_API_KEYS" in problem and "SHARDLINE_ALLOW_NO_KEYS=1" in problem
    assert keys_problem("127.0.0.1", api) is None and keys_problem("localhost", api) is None
    assert keys_problem("0.0.0.0", parse_config(raw_config(tmp_path, api_keys=[USER])).api) is None
    monkeypatch.setenv("SHARDLINE_ADMIN_KEYS", ADMIN)
    assert keys_problem("0.0.0.0", api) is None
    monkeypatch.delenv("SHARDLINE_ADMIN_KEYS")
    monkeypatch.setenv("SHARDLINE_ALLOW_NO_KEYS", "1")
    assert keys_problem("0.0.0.0", api) is None


def test_the_edge_settings_are_checked(tmp_path: Path) -> None:
    api = parse_config(raw_config(tmp_path, max_header_bytes=1024, max_url_bytes=512, header_timeout_s=2,
                                  max_connections=8, allowed_hosts=["a.test"], admin_keys=[ADMIN])).api
    assert (api.max_header_bytes, api.max_url_bytes, api.header_timeout_s, api.max_connections) == (1024, 512, 2, 8)
    assert api.allowed_hosts == ("a.test",) and api.admin_keys == (ADMIN,)
    for key, bad in (("max_connections", 0), ("header_timeout_s", -1), ("allowed_hosts", "a.test"),
                     ("admin_keys", [""])):
        with pytest.raises(ConfigError, match=f"api.{key}"):
            parse_config(raw_config(tmp_path, **{key: bad}))


def test_an_error_inside_a_started_stream_names_no_server_path(tmp_path: Path) -> None:
    """A generation that fails after its stream started (an SSE error event) says why without the cache's path."""
    from types import SimpleNamespace

    from api.generation import Generation
    from protos import coordinator_pb2
    from protos.data_structures import SamplingParams

    config = parse_config(raw_config(tmp_path))
    cache = str(config.model_cache_dir)
    replies = [coordinator_pb2.GenerateResponse(prompt_tokens=1),
               coordinator_pb2.GenerateResponse(finish_reason="error", error=f"cannot read {cache}/m/model.bin")]

    class Call:
        async def read(self) -> coordinator_pb2.GenerateResponse:
            return replies.pop(0)

        def cancel(self) -> None:
            pass

    backend = SimpleNamespace(config=config, coordinator=SimpleNamespace(generate=lambda *a, **k: Call()))

    async def run() -> ApiError:
        gen = Generation(backend, "m", [1], 4, SamplingParams(), [], "r1")  # type: ignore[arg-type]
        await gen.start()
        with pytest.raises(ApiError) as failed:
            async for _ in gen.chunks():
                pass
        return failed.value

    error = asyncio.run(run())
    assert error.status == 503 and "m/model.bin" in error.message and cache not in error.message


@pytest.mark.parametrize(("route", "field", "value", "allowed"), [
    ("/v1/chat/completions", "temperature", "NaN", "[0, 2]"),
    ("/v1/chat/completions", "temperature", "Infinity", "[0, 2]"),
    ("/v1/completions", "repetition_penalty", "1e-39", "[0.01, 10]"),
    ("/v1/completions", "top_p", "-Infinity", "(0, 1]"),
    ("/api/model/process", "temperature", "1e39", "[0, 2]"),
    ("/api/model/process", "repetition_penalty", "NaN", "[0.01, 10]"),
])
def test_sampling_values_that_overflow_are_422_naming_field_and_range(tmp_path: Path, route: str, field: str,
                                                                     value: str, allowed: str) -> None:
    body = ('{"model": "m", "messages": [{"role": "user", "content": "hi"}], "prompt": "hi", "text": "hi", '
            f'"{field}": {value}}}')
    if route == "/api/model/process":
        body = f'{{"text": "hi", "{field}": {value}}}'
    r = client(tmp_path).post(route, content=body.encode(), headers={"Content-Type": "application/json"})
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["param"] == field and allowed in error["message"], error
