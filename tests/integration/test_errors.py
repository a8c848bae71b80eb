"""Bad input gets a clear error with the right status; nothing a user sends produces a 500."""

from __future__ import annotations

import grpc
import httpx
import pytest

from protos import coordinator_pb2, coordinator_pb2_grpc
from tests.conftest import SMOL, RunningCluster

pytestmark = pytest.mark.cluster


@pytest.mark.parametrize("body,field", [
    ({}, "text"),
    ({"text": ""}, "text"),
    ({"text": 5}, "text"),
    ({"text": "hi", "max_tokens": "many"}, "max_tokens"),
    ({"text": "hi", "max_tokens": 0}, "max_tokens"),
    ({"text": "hi", "temperature": -1}, "temperature"),
    ({"text": "hi", "top_p": 0}, "top_p"),
    ({"text": "hi", "stop": [""]}, "stop"),
    ({"text": "hi", "unknown_field": 1}, "unknown_field"),
])
def test_invalid_body_is_422_naming_the_field(cluster: RunningCluster, body: dict, field: str) -> None:
    r = httpx.post(f"{cluster.api_url}/api/model/process", json=body, timeout=30)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["param"] == field
    assert field in r.json()["error"]["message"]


def test_not_json_is_422(cluster: RunningCluster) -> None:
    r = httpx.post(f"{cluster.api_url}/api/model/process", content=b"{not json", timeout=30,
                   headers={"content-type": "application/json"})
    assert r.status_code == 422


def test_unknown_model_is_404(cluster: RunningCluster) -> None:
    r = httpx.post(f"{cluster.api_url}/api/model/process", json={"text": "hi", "model": "gpt-9"}, timeout=30)
    assert r.status_code == 404
    assert "gpt-9" in r.json()["error"]["message"] and SMOL in r.json()["error"]["message"]


def test_unknown_route_is_404(cluster: RunningCluster) -> None:
    r = httpx.get(f"{cluster.api_url}/api/nothing-here", timeout=30)
    assert r.status_code == 404


def test_prompt_longer_than_context_is_400(cluster: RunningCluster) -> None:
    text = "word " * 400  # the tiny models take 256 positions
    r = httpx.post(f"{cluster.api_url}/api/model/process",
                   json={"text": text, "model": "tiny-llama-2way", "chat": False}, timeout=30)
    assert r.status_code == 400, r.text
    assert "256" in r.json()["error"]["message"]


def test_max_tokens_past_context_is_400(cluster: RunningCluster) -> None:
    r = httpx.post(f"{cluster.api_url}/api/model/process",
                   json={"text": "hello", "model": "tiny-llama-2way", "chat": False, "max_tokens": 1000}, timeout=30)
    assert r.status_code == 400, r.text
    msg = r.json()["error"]["message"]
    assert "1000" in msg and "256" in msg


def test_health(cluster: RunningCluster) -> None:
    assert httpx.get(f"{cluster.api_url}/health", timeout=10).json() == {"status": "ok"}


@pytest.mark.parametrize("request_kwargs,code", [
    ({"model": "nope", "prompt_token_ids": [1], "max_tokens": 1}, grpc.StatusCode.NOT_FOUND),
    ({"model": SMOL, "prompt_token_ids": [], "max_tokens": 1}, grpc.StatusCode.INVALID_ARGUMENT),
    ({"model": SMOL, "prompt_token_ids": [1, 10**7], "max_tokens": 1}, grpc.StatusCode.INVALID_ARGUMENT),
    ({"model": SMOL, "prompt_token_ids": [1], "max_tokens": 0}, grpc.StatusCode.INVALID_ARGUMENT),
    ({"model": SMOL, "prompt_token_ids": [1], "max_tokens": 20000}, grpc.StatusCode.INVALID_ARGUMENT),
])
def test_coordinator_rejects_bad_generate(cluster: RunningCluster, request_kwargs: dict, code: grpc.StatusCode
                                          ) -> None:
    with grpc.insecure_channel(cluster.coordinator_address) as channel:
        stub = coordinator_pb2_grpc.CoordinatorStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            list(stub.Generate(coordinator_pb2.GenerateRequest(**request_kwargs), timeout=30))
    assert err.value.code() == code
    assert err.value.details()
