"""The API's guard rails on a small cluster of its own: API keys, CORS, body size, a full queue (429 with
Retry-After), a hung node (504 within the deadline) and a dead node (503 naming it, /ready says so).

The tests run in file order; the last one kills a node."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import openai
import pytest

from protos import coordinator_pb2, coordinator_pb2_grpc
from tests.conftest import RunningCluster, start_cluster, tiny_cluster_config

pytestmark = pytest.mark.cluster

MODEL = "tiny-guarded"
KEY = "sk-test-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
KV_TOKENS = 250
TIMEOUT_S = 5.0
ORIGIN = "http://ui.example.test"


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory, smol_dir: Path) -> Iterator[RunningCluster]:
    work = tmp_path_factory.mktemp("guarded")
    config = tiny_cluster_config(work, smol_dir, MODEL, ["g1", "g2"], KV_TOKENS, seed=4)
    config["coordinator"]["max_waiting"] = 1
    config["coordinator"]["health_timeout_s"] = 10.0  # the hung node must meet the API's deadline (504) first
    config["api"].update(api_keys=["another-key", KEY], cors_origins=[ORIGIN], max_body_bytes=4096,
                         request_timeout_s=TIMEOUT_S, ready_ttl_s=0.5, ready_timeout_s=TIMEOUT_S)
    config["limits"] = {"max_prompt_tokens": 240, "max_new_tokens": 50}  # the tiny model's context is 256
    running = start_cluster(config, work)
    yield running
    running.stop()


def chat(**extra: object) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4, **extra}


def test_prompt_and_max_tokens_limits_are_400_naming_the_limit(guarded: RunningCluster) -> None:
    r = httpx.post(f"{guarded.api_url}/v1/chat/completions", json=chat(max_tokens=51), headers=AUTH, timeout=30)
    assert r.status_code == 400, r.text
    assert "limits.max_new_tokens" in r.json()["error"]["message"] and "50" in r.json()["error"]["message"]
    r = httpx.post(f"{guarded.api_url}/api/model/process", headers=AUTH, timeout=30,
                   json={"text": "word " * 250, "chat": False, "max_tokens": 4})
    assert r.status_code == 400, r.text
    assert "limits.max_prompt_tokens" in r.text and "240" in r.text
    r = httpx.post(f"{guarded.api_url}/v1/chat/completions", json=chat(max_tokens=50), headers=AUTH, timeout=30)
    assert r.status_code == 200, r.text


def test_health_needs_no_key_but_everything_else_does(guarded: RunningCluster) -> None:
    api = guarded.api_url
    assert httpx.get(f"{api}/health", timeout=10).status_code == 200
    assert httpx.get(f"{api}/metrics", timeout=10).status_code == 200  # scrapers need no key either
    for method, path in [("GET", "/v1/models"), ("POST", "/v1/chat/completions"), ("POST", "/api/model/process"),
                         ("GET", "/ready"), ("POST", "/api/tokenize"), ("GET", "/openapi.json"),
                         ("GET", "/api/cluster"), ("GET", "/api/models"), ("POST", "/api/models"),
                         ("DELETE", "/api/models/x"), ("POST", "/api/nodes")]:
        r = httpx.request(method, api + path, json={}, timeout=10)
        assert r.status_code == 401, (path, r.text)
        assert r.headers["www-authenticate"] == "Bearer"
        assert "missing API key" in r.json()["error"]["message"] and r.json()["error"]["type"] == "authentication_error"
    wrong = httpx.get(f"{api}/v1/models", headers={"Authorization": "Bearer nope"}, timeout=10)
    assert wrong.status_code == 401 and "invalid API key" in wrong.json()["error"]["message"]
    assert httpx.get(f"{api}/v1/models", headers=AUTH, timeout=10).status_code == 200
    assert httpx.get(f"{api}/v1/models", headers={"Authorization": "Bearer another-key"}, timeout=10).status_code == 200


def test_openai_client_with_and_without_key(guarded: RunningCluster) -> None:
    base = f"{guarded.api_url}/v1"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=base, api_key="wrong", max_retries=0).models.list()
    c = openai.OpenAI(base_url=base, api_key=KEY, max_retries=0, timeout=60)
    r = c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=3,
                                  temperature=0, extra_body={"ignore_eos": True})
    assert r.usage.completion_tokens == 3
    # without max_tokens, the default (256) is capped so that it fits the 250-token KV cache
    r = c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi " * 200}], temperature=0,
                                  extra_body={"ignore_eos": True})
    assert r.usage.prompt_tokens + r.usage.completion_tokens == KV_TOKENS and r.choices[0].finish_reason == "length"


def test_cors_preflight_and_headers(guarded: RunningCluster) -> None:
    api = guarded.api_url
    pre = httpx.options(f"{api}/v1/chat/completions", timeout=10, headers={
        "Origin": ORIGIN, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type"})
    assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == ORIGIN
    r = httpx.get(f"{api}/v1/models", headers={**AUTH, "Origin": ORIGIN}, timeout=10)
    assert r.headers["access-control-allow-origin"] == ORIGIN
    other = httpx.options(f"{api}/v1/models", timeout=10, headers={
        "Origin": "http://evil.test", "Access-Control-Request-Method": "GET"})
    assert "access-control-allow-origin" not in other.headers


def test_body_too_large_is_413(guarded: RunningCluster) -> None:
    big = {"model": MODEL, "messages": [{"role": "user", "content": "x" * 5000}]}
    r = httpx.post(f"{guarded.api_url}/v1/chat/completions", json=big, headers=AUTH, timeout=10)
    assert r.status_code == 413 and "4096" in r.json()["error"]["message"]

    def chunked() -> Iterator[bytes]:  # no Content-Length: counted while reading
        yield b'{"text": "'
        for _ in range(10):
            yield b"y" * 1000
        yield b'"}'

    r = httpx.post(f"{guarded.api_url}/api/model/process", content=chunked(), timeout=10,
                   headers={**AUTH, "content-type": "application/json"})
    assert r.status_code == 413 and "api.max_body_bytes" in r.json()["error"]["message"]


def test_full_queue_is_429_with_retry_after(guarded: RunningCluster) -> None:
    async def scenario() -> tuple[httpx.Response, httpx.Response, int]:
        async with grpc.aio.insecure_channel(guarded.coordinator_address) as channel:
            stub = coordinator_pb2_grpc.CoordinatorStub(channel)
            hog = stub.Generate(coordinator_pb2.GenerateRequest(  # holds 245 of the 250 KV tokens
                model=MODEL, prompt_token_ids=list(range(100, 110)), max_tokens=235, ignore_eos=True), timeout=60)
            await hog.read()
            waiter = stub.Generate(coordinator_pb2.GenerateRequest(  # cannot fit yet: fills the queue (1)
                model=MODEL, prompt_token_ids=list(range(100, 110)), max_tokens=20, ignore_eos=True), timeout=60)
            await waiter.read()
            async with httpx.AsyncClient(timeout=30, headers=AUTH) as client:
                plain = await client.post(f"{guarded.api_url}/v1/chat/completions", json=chat())
                streamed = await client.post(f"{guarded.api_url}/v1/completions", json={
                    "model": MODEL, "prompt": "hi", "max_tokens": 3, "stream": True})
            tokens = 0
            while (msg := await hog.read()) is not grpc.aio.EOF:
                tokens += len(msg.token_ids)
            while await waiter.read() is not grpc.aio.EOF:
                pass
            return plain, streamed, tokens

    plain, streamed, hog_tokens = asyncio.run(scenario())
    assert hog_tokens == 235
    for r in (plain, streamed):
        assert r.status_code == 429, r.text
        assert r.headers["retry-after"] == "1"
        assert "max_waiting" in r.json()["error"]["message"] and r.json()["error"]["type"] == "rate_limit_error"


def test_ready_when_the_pipeline_works(guarded: RunningCluster) -> None:
    r = httpx.get(f"{guarded.api_url}/ready", headers=AUTH, timeout=30)
    assert r.status_code == 200 and r.json()["models"][0]["ready"], r.text


def test_hung_node_gives_504_within_the_deadline(guarded: RunningCluster) -> None:
    pid = guarded.node_pid("g2")
    os.kill(pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        r = httpx.post(f"{guarded.api_url}/v1/chat/completions", json=chat(), headers=AUTH,
                       timeout=30)
        took = time.monotonic() - started
    finally:
        os.kill(pid, signal.SIGCONT)
    assert r.status_code == 504, r.text
    assert f"{TIMEOUT_S:g} s" in r.json()["error"]["message"] and r.json()["error"]["type"] == "timeout"
    assert took < TIMEOUT_S + 5
    # once the node runs again, so does the model
    deadline = time.monotonic() + 30
    while httpx.post(f"{guarded.api_url}/v1/chat/completions", json=chat(), headers=AUTH,
                     timeout=30).status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.5)


def test_dead_node_gives_503_naming_it(guarded: RunningCluster) -> None:
    pid = guarded.node_pid("g2")
    os.kill(pid, signal.SIGKILL)
    time.sleep(0.5)  # the launcher reaps it
    address = guarded.node_address("g2")
    r = httpx.post(f"{guarded.api_url}/v1/chat/completions", json=chat(), headers=AUTH, timeout=30)
    assert r.status_code == 503, r.text
    assert "g2" in r.json()["error"]["message"] and address in r.json()["error"]["message"]
    assert r.json()["error"]["type"] == "service_unavailable"
    r = httpx.post(f"{guarded.api_url}/api/model/process", json={"text": "hi", "model": MODEL, "max_tokens": 4},
                   headers=AUTH, timeout=30)
    assert r.status_code == 503 and "g2" in r.json()["error"]["message"]
    ready = httpx.get(f"{guarded.api_url}/ready", headers=AUTH, timeout=30)
    assert ready.status_code == 503 and "g2" in ready.json()["error"]["message"]
    assert ready.json()["status"] == "unavailable"
    assert httpx.get(f"{guarded.api_url}/health", timeout=10).status_code == 200
