"""One rule set for a model spec (protos/model_spec.py): the same specs get the same verdict from config.json
(protos/config.py), the coordinator's AddModel and the API's POST /api/models body (api/admin_schemas.py)."""

from __future__ import annotations

import asyncio
import re
from types import SimpleNamespace
from typing import Any

import grpc
import pytest
from pydantic import ValidationError

from api.admin_schemas import AddModelRequest
from coordinator.service import CoordinatorServicer
from protos import common_pb2, coordinator_pb2
from protos.config import ConfigError, ModelConfig, parse_config
from protos.model_spec import (
    DEFAULT_DEVICE,
    DEFAULT_DTYPE,
    DEFAULT_KV_CACHE_TOKENS,
    DEFAULT_QUANTIZATION,
    DEFAULT_REPLICAS,
)
from tests.unit.fakes import Aborted, FakeContext

NODES = [{"id": "a", "address": "127.0.0.1:1"}, {"id": "b", "address": "127.0.0.1:2", "model_part": 1}]


def via_config(spec: dict[str, Any]) -> str | None:
    """None when config.json accepts the model, else the field its error names."""
    try:
        parse_config({"models": [spec], "nodes": NODES})
    except ConfigError as e:
        match = re.match(r"config field models\[0\]\.(\w+)", str(e))
        assert match, e
        return match.group(1)
    return None


def add_model_request(spec: dict[str, Any]) -> coordinator_pb2.AddModelRequest:
    stages = [coordinator_pb2.StageNodes(node_ids=[e] if isinstance(e, str) else e) for e in spec.get("nodes", [])]
    ranges = [common_pb2.LayerRange(start=s, end=e) for s, e in spec.get("layer_ranges", [])]
    scalars = {k: v for k, v in spec.items() if k not in ("nodes", "layer_ranges")}
    return coordinator_pb2.AddModelRequest(stages=stages, layer_ranges=ranges, **scalars)


def add_model(spec: dict[str, Any]) -> tuple[str | None, list[Any]]:
    """(None, the ModelRequest the registry got) when AddModel accepts the model, else (the field it names, [])."""
    added: list[Any] = []

    async def add(request: Any) -> None:
        added.append(request)
        raise Aborted(grpc.StatusCode.OK, "stop here: validation passed")

    servicer = CoordinatorServicer(SimpleNamespace(engines={}, membership=None, add=add))  # type: ignore[arg-type]
    try:
        asyncio.run(servicer.AddModel(add_model_request(spec), FakeContext()))
    except Aborted as e:
        if e.code != grpc.StatusCode.OK:
            assert e.code == grpc.StatusCode.INVALID_ARGUMENT and not added, e
            return re.match(r"\w+", str(e)).group(0), []  # type: ignore[union-attr]
    return None, added


def via_add_model(spec: dict[str, Any]) -> str | None:
    return add_model(spec)[0]


def via_api(spec: dict[str, Any]) -> str | None:
    try:
        AddModelRequest(**spec)
    except ValidationError as e:
        return str(e.errors()[0]["loc"][0])
    return None


GOOD = [
    {"name": "m"},
    {"name": "Qwen2.5-0.5B", "dtype": "bfloat16", "device": "cuda:1"},
    {"name": "a..b", "dtype": "float16", "device": "mps"},
    {"name": "modèle", "device": "cuda"},
    {"name": "m", "kv_cache_tokens": 1, "max_context": 256},
    {"name": "m", "kv_cache_tokens": 10_000_000, "max_context": 10_000_000},
    {"name": "m", "nodes": ["a", "b"], "layer_ranges": [[0, 10], [10, 30]]},
    {"name": "m", "nodes": [["a", "b"]]},
    {"name": "m", "nodes": [["a"], "b"], "layer_ranges": [[0, 1], [1, 2]]},
    {"name": "x" * 128},
    {"name": "m", "quantization": "int8"},
    {"name": "m", "dtype": "bfloat16", "quantization": "int8"},
    {"name": "m", "dtype": "bfloat16", "quantization": "int4"},
    {"name": "m", "quantization": "none"},
    {"name": "m", "forwarding": "star", "wire_dtype": "int8"},
    {"name": "m", "forwarding": "direct", "wire_dtype": "bfloat16"},
    {"name": "m", "wire_dtype": "auto"},
    {"name": "m", "speculative": "off"},
    {"name": "m", "speculative": "ngram", "num_speculative_tokens": 32},
    {"name": "m", "num_speculative_tokens": 1},
]
BAD = [  # (spec, the field every path names)
    ({"name": ""}, "name"),
    ({"name": "   "}, "name"),
    ({"name": "."}, "name"),
    ({"name": ".hidden"}, "name"),
    ({"name": "a/b"}, "name"),
    ({"name": "a\nb"}, "name"),
    ({"name": "x" * 129}, "name"),
    ({"name": "é" * 128}, "name"),  # 256 bytes as UTF-8
    ({"name": "m", "dtype": "float64"}, "dtype"),
    ({"name": "m", "dtype": "FLOAT32"}, "dtype"),
    ({"name": "m", "quantization": "int3"}, "quantization"),
    ({"name": "m", "quantization": "INT8"}, "quantization"),
    ({"name": "m", "forwarding": "ring"}, "forwarding"),
    ({"name": "m", "wire_dtype": "int4"}, "wire_dtype"),
    ({"name": "m", "wire_dtype": "FLOAT16"}, "wire_dtype"),
    ({"name": "m", "speculative": "eagle"}, "speculative"),
    ({"name": "m", "speculative": "OFF"}, "speculative"),
    ({"name": "m", "num_speculative_tokens": 33}, "num_speculative_tokens"),
    ({"name": "m", "speculative": "draft"}, "draft_model"),  # which one?
    ({"name": "m", "draft_model": "small"}, "draft_model"),  # speculative is ngram
    ({"name": "m", "speculative": "draft", "draft_model": "m"}, "draft_model"),  # itself
    ({"name": "m", "speculative": "draft", "draft_model": "a/b"}, "draft_model"),
    ({"name": "m", "num_speculative_tokens": -1}, "num_speculative_tokens"),
    ({"name": "m", "device": "gpu"}, "device"),
    ({"name": "m", "device": "CPU"}, "device"),
    ({"name": "m", "device": "cuda:"}, "device"),
    ({"name": "m", "device": "cuda:-1"}, "device"),
    ({"name": "m", "kv_cache_tokens": -1}, "kv_cache_tokens"),
    ({"name": "m", "kv_cache_tokens": 10_000_001}, "kv_cache_tokens"),
    ({"name": "m", "max_context": -5}, "max_context"),
    ({"name": "m", "max_context": 10_000_001}, "max_context"),
    ({"name": "m", "nodes": ["a", "a"]}, "nodes"),
    ({"name": "m", "nodes": [["a", "b"], "a"]}, "nodes"),
    ({"name": "m", "nodes": ["a", []]}, "nodes"),
    ({"name": "m", "nodes": [""]}, "nodes"),
    ({"name": "m", "nodes": ["a", "b"], "layer_ranges": [[0, 10]]}, "layer_ranges"),
    ({"name": "m", "nodes": ["a", "b"], "layer_ranges": [[0, 10], [11, 30]]}, "layer_ranges"),
    ({"name": "m", "nodes": ["a", "b"], "layer_ranges": [[0, 10], [9, 30]]}, "layer_ranges"),
    ({"name": "m", "nodes": ["a"], "layer_ranges": [[1, 30]]}, "layer_ranges"),
    ({"name": "m", "nodes": ["a"], "layer_ranges": [[5, 5]]}, "layer_ranges"),
]


@pytest.mark.parametrize("spec", GOOD, ids=lambda s: repr(s)[:60])
def test_every_path_accepts_the_same_specs(spec: dict[str, Any]) -> None:
    assert (via_config(spec), via_add_model(spec), via_api(spec)) == (None, None, None)


@pytest.mark.parametrize(("spec", "field"), BAD, ids=lambda s: repr(s)[:60])
def test_every_path_refuses_the_same_specs_naming_the_field(spec: dict[str, Any], field: str) -> None:
    assert (via_config(spec), via_add_model(spec), via_api(spec)) == (field, field, field)


def test_the_defaults_are_the_same_everywhere() -> None:
    configured = parse_config({"models": [{"name": "m"}], "nodes": NODES}).models[0]
    _, [added] = add_model({"name": "m"})
    body = AddModelRequest(name="m")
    assert added.replicas == body.replicas == DEFAULT_REPLICAS
    for model in (configured, added.model):
        assert isinstance(model, ModelConfig)
        assert (model.dtype, model.quantization, model.device, model.kv_cache_tokens, model.max_context) == (
            DEFAULT_DTYPE, DEFAULT_QUANTIZATION, DEFAULT_DEVICE, DEFAULT_KV_CACHE_TOKENS, None)
    assert (body.dtype, body.quantization, body.device, body.kv_cache_tokens, body.max_context) == (
        DEFAULT_DTYPE, DEFAULT_QUANTIZATION, DEFAULT_DEVICE, DEFAULT_KV_CACHE_TOKENS, None)


def test_add_model_keeps_what_the_request_gives() -> None:
    spec = {"name": "m", "source": "smol", "dtype": "float16", "device": "mps", "nodes": ["a", ["b"]],
            "layer_ranges": [[0, 4], [4, 30]], "kv_cache_tokens": 512, "max_context": 64, "replicas": 2,
            "quantization": "int8", "forwarding": "star", "wire_dtype": "float16", "speculative": "off",
            "num_speculative_tokens": 5}
    _, [added] = add_model(spec)
    model = added.model
    assert (model.forwarding, model.wire_dtype) == ("star", "float16")
    assert (model.speculative, model.num_speculative_tokens) == ("off", 5)
    assert (model.name, model.source, model.dtype, model.quantization, model.device, model.stages,
            added.replicas) == ("m", "smol", "float16", "int8", "mps", (("a",), ("b",)), 2)
    assert [(r.start, r.end) for r in model.layer_ranges] == [(0, 4), (4, 30)]
    assert (model.kv_cache_tokens, model.max_context) == (512, 64)


def test_a_configured_draft_model_must_be_one_of_the_models() -> None:
    draft = {"name": "big", "speculative": "draft", "draft_model": "small"}
    config = parse_config({"models": [draft, {"name": "small"}], "nodes": NODES})
    assert (config.models[0].speculative, config.models[0].draft_model) == ("draft", "small")
    with pytest.raises(ConfigError, match=r"models\[0\]\.draft_model: 'small' is not among the models \['big'\]"):
        parse_config({"models": [draft], "nodes": NODES})


@pytest.mark.parametrize("replicas", [-1, 17])
def test_runtime_paths_refuse_the_same_replicas(replicas: int) -> None:
    assert via_add_model({"name": "m", "replicas": replicas}) == via_api({"name": "m", "replicas": replicas}) \
        == "replicas"
    assert via_api({"name": "m", "replicas": 0}) == "replicas"  # over gRPC, 0 is the unset default


@pytest.mark.parametrize("source", ["../model.gguf", "/abs/folder", ".hidden"])
def test_a_runtime_source_is_one_cache_folder_a_configured_one_may_be_a_path(source: str) -> None:
    assert via_config({"name": "m", "source": source}) is None  # what `shardline models` prepares it from
    assert via_add_model({"name": "m", "source": source}) == via_api({"name": "m", "source": source}) == "source"


def test_layer_ranges_of_a_runtime_model_need_its_nodes() -> None:
    spec = {"name": "m", "layer_ranges": [[0, 10], [10, 30]]}
    assert via_config(spec) is None  # config.json: the stages are the nodes by model_part
    assert via_add_model(spec) == via_api(spec) == "layer_ranges"


def test_config_knows_its_nodes_the_registry_checks_runtime_ones() -> None:
    assert via_config({"name": "m", "nodes": ["zz"]}) == "nodes"
    assert via_api({"name": "m", "nodes": ["zz"]}) is None and via_add_model({"name": "m", "nodes": ["zz"]}) is None


@pytest.mark.parametrize(("field", "value"), [("kv_cache_tokens", "5"), ("kv_cache_tokens", True),
                                              ("max_context", 2.0), ("name", 5), ("device", None)])
def test_json_types_are_strict_in_the_config_and_the_api(field: str, value: Any) -> None:
    spec = {"name": "m", field: value}
    assert via_config(spec) == via_api(spec) == field


def test_errors_say_what_is_allowed() -> None:
    with pytest.raises(ConfigError, match=r"models\[0\]\.device: must be 'cpu', 'cuda', 'cuda:N' or 'mps'"):
        parse_config({"models": [{"name": "m", "device": "gpu"}], "nodes": NODES})
    with pytest.raises(ValidationError, match=r"must be an integer in 1\.\.10000000"):
        AddModelRequest(name="m", kv_cache_tokens=0)
    with pytest.raises(Aborted, match=r"^nodes\[1\] must be a node id"):
        asyncio.run(CoordinatorServicer(SimpleNamespace(engines={}, membership=None)).AddModel(  # type: ignore[arg-type]
            add_model_request({"name": "m", "nodes": ["a", [""]]}), FakeContext()))
