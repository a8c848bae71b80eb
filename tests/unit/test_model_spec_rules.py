"""One rule for a model's device and one default for its KV budget, on every path that takes a model spec:
config.json (protos/config.py), the coordinator's AddModel and the API's POST /api/models."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import grpc
import pytest
from pydantic import ValidationError

from api.schemas import AddModelRequest
from coordinator.service import CoordinatorServicer
from protos import coordinator_pb2
from protos.config import DEFAULT_KV_CACHE_TOKENS, ConfigError, ModelConfig, parse_config
from tests.unit.fakes import Aborted, FakeContext

GOOD = ["cpu", "cuda", "cuda:0", "cuda:12", "mps"]
BAD = ["gpu", "cudaX", "cuda:", "cuda:-1", "CPU", "cpu ", ""]


def _config(device: str) -> ModelConfig:
    raw = {"models": [{"name": "m", "device": device}], "nodes": [{"id": "a", "address": "127.0.0.1:1"}]}
    return parse_config(raw).models[0]


def _add_model(device: str) -> list[Any]:
    added: list[Any] = []

    async def add(request: Any) -> None:
        added.append(request)
        raise Aborted(grpc.StatusCode.OK, "stop here: validation passed")

    servicer = CoordinatorServicer(SimpleNamespace(engines={}, membership=None, add=add))  # type: ignore[arg-type]
    try:
        asyncio.run(servicer.AddModel(coordinator_pb2.AddModelRequest(name="m", device=device), FakeContext()))
    except Aborted as e:
        if e.code != grpc.StatusCode.OK:
            assert e.code == grpc.StatusCode.INVALID_ARGUMENT and "'mps'" in str(e), e
    return added


@pytest.mark.parametrize("device", GOOD)
def test_every_path_accepts_the_same_devices(device: str) -> None:
    assert _config(device).device == device
    assert AddModelRequest(name="m", device=device).device == device
    assert [r.model.device for r in _add_model(device)] == [device]


@pytest.mark.parametrize("device", [d for d in BAD if d])  # "" over gRPC means the default (cpu)
def test_every_path_refuses_the_same_devices(device: str) -> None:
    with pytest.raises(ConfigError, match="device"):
        _config(device)
    with pytest.raises(ValidationError):
        AddModelRequest(name="m", device=device)
    assert _add_model(device) == []


def test_the_kv_budget_default_is_the_same_everywhere() -> None:
    raw = {"models": [{"name": "m"}], "nodes": [{"id": "a", "address": "127.0.0.1:1"}]}
    assert parse_config(raw).models[0].kv_cache_tokens == DEFAULT_KV_CACHE_TOKENS
    assert AddModelRequest(name="m").kv_cache_tokens == DEFAULT_KV_CACHE_TOKENS
    assert [r.model.kv_cache_tokens for r in _add_model("cpu")] == [DEFAULT_KV_CACHE_TOKENS]
