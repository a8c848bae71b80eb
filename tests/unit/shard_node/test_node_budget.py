"""A node's memory budget under concurrent LoadShards: the bytes of a load are reserved before it starts, so two
loads that each fit alone but not together never both succeed, and a failed load gives its bytes back."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import pytest

from protos import shard_pb2, tensors, wire
from protos.data_structures import LayerRange
from shard_node import service
from shard_node.architectures import ModelSpec
from shard_node.load_plan import shard_size
from shard_node.quantize import kernel_description
from tests.unit.fakes import Aborted, FakeContext

CONFIG = {"model_type": "llama", "num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 128,
          "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 256, "max_position_embeddings": 128}
KV_TOKENS = 64


def fake_runner(fail: set[str]) -> Any:
    """Stands for ShardRunner: holds the exact bytes the real one would, loads nothing (or fails by model)."""

    def make(name: str, model_dir: Path, spec: ModelSpec, layers: LayerRange, dtype: Any, device: Any,
             kv_tokens: int, max_sequences: int, quantization: str) -> SimpleNamespace:
        if name in fail:
            raise ValueError("truncated checkpoint")
        size = shard_size(spec, layers, dtype, kv_tokens, quantization)
        model = SimpleNamespace(weight_bytes=lambda: size.weight_bytes, layer_weight_bytes=lambda: 0,
                                embed_tokens=None)
        kv = SimpleNamespace(capacity_tokens=kv_tokens, bytes_per_token=size.kv_bytes // kv_tokens, used_tokens=0,
                             num_sequences=0, block_size=16, num_blocks=kv_tokens // 16, used_blocks=0,
                             cached_blocks=0, reserved_tokens=0)
        return SimpleNamespace(name=name, model_dir=model_dir, spec=spec, layers=layers, dtype=dtype,
                               device=device, model=model, kv=kv, is_last=True, quantization=quantization,
                               kernel=kernel_description(quantization, device))

    return make


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    (tmp_path / "config.json").write_text(json.dumps(CONFIG))
    return tmp_path


def one_shard_bytes() -> int:
    spec = ModelSpec.from_hf_config(CONFIG)
    return shard_size(spec, LayerRange(0, 2), tensors.DTYPES["float32"], KV_TOKENS).total_bytes


def load(node: service.ShardNodeServicer, model: str, model_dir: Path) -> Any:
    req = shard_pb2.LoadShardRequest(model=model, model_path=str(model_dir), dtype="float32", device="cpu",
                                     kv_cache_tokens=KV_TOKENS, layers=wire.layer_range_to_proto(LayerRange(0, 2)))
    return node.LoadShard(req, FakeContext())


async def _outcomes(*calls: Any) -> list[Any]:
    return await asyncio.gather(*calls, return_exceptions=True)


def test_concurrent_loads_never_exceed_the_budget(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service, "ShardRunner", fake_runner(set()))
    budget = one_shard_bytes() * 3 // 2  # one shard fits, two do not
    node = service.ShardNodeServicer("n1", KV_TOKENS, memory_budget_bytes=budget)
    results = asyncio.run(_outcomes(load(node, "a", model_dir), load(node, "b", model_dir)))
    loaded = [r for r in results if isinstance(r, shard_pb2.ShardInfo)]
    refused = [r for r in results if isinstance(r, Aborted)]
    assert len(loaded) == 1 and len(refused) == 1, results
    assert refused[0].code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "budget" in str(refused[0])
    assert list(node.runners) == [loaded[0].model]
    assert node.memory_used_bytes() <= budget


def test_a_failed_load_gives_its_reservation_back(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service, "ShardRunner", fake_runner({"broken"}))
    node = service.ShardNodeServicer("n1", KV_TOKENS, memory_budget_bytes=one_shard_bytes() * 3 // 2)
    first = asyncio.run(_outcomes(load(node, "broken", model_dir)))[0]
    assert isinstance(first, Aborted) and first.code == grpc.StatusCode.FAILED_PRECONDITION
    assert node.memory_used_bytes() == 0
    info = asyncio.run(load(node, "good", model_dir))
    assert info.model == "good"
