"""One reader of a checkpoint's HF config.json (protos/hf_config.py): the coordinator's read_model_meta and the
shard node's ModelSpec / LoadShard see the same numbers and the same clear errors."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import grpc
import pytest

from coordinator.model_meta import read_model_meta
from protos import shard_pb2, wire
from protos.data_structures import LayerRange
from protos.hf_config import HfConfigError, ModelNotPrepared, int_field, read_generation_config, read_hf_config
from shard_node.architectures import ModelSpec
from shard_node.service import ShardNodeServicer
from tests.unit.fakes import Aborted, FakeContext


def test_both_readers_agree_on_a_real_checkpoint(smol_dir: Path) -> None:
    meta = read_model_meta(smol_dir)
    spec = ModelSpec.from_hf_config(read_hf_config(smol_dir))
    assert (meta.num_layers, meta.vocab_size, meta.max_context, meta.model_type) == (
        spec.num_layers, spec.vocab_size, spec.max_positions, spec.model_type) == (30, 49152, 8192, "llama")
    assert meta.eos_token_ids == (2,)


def test_a_missing_config_is_not_prepared(tmp_path: Path) -> None:
    with pytest.raises(ModelNotPrepared, match="config.json missing.*shardline models"):
        read_hf_config(tmp_path)
    with pytest.raises(FileNotFoundError):  # what the registry turns into NOT_FOUND
        read_model_meta(tmp_path)
    assert read_generation_config(tmp_path) == {}


@pytest.mark.parametrize("text", ["{not json", "[1, 2]"])
def test_an_invalid_config_says_so(tmp_path: Path, text: str) -> None:
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(HfConfigError, match="config.json"):
        read_hf_config(tmp_path)


def test_a_missing_field_is_named(tmp_path: Path, smol_dir: Path) -> None:
    cfg = json.loads((smol_dir / "config.json").read_text())
    del cfg["num_hidden_layers"]
    with pytest.raises(HfConfigError, match="num_hidden_layers or n_layer"):
        int_field(cfg, "num_hidden_layers", "n_layer")
    with pytest.raises(HfConfigError, match="num_hidden_layers"):
        ModelSpec.from_hf_config(cfg)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(HfConfigError, match="num_hidden_layers or n_layer"):
        read_model_meta(tmp_path)
    assert int_field({"n_positions": 1024.0}, "max_position_embeddings", "n_positions") == 1024
    with pytest.raises(HfConfigError, match="must be an integer"):
        int_field({"vocab_size": "big"}, "vocab_size")


def _load(model_dir: Path) -> Aborted:
    node = ShardNodeServicer("n1", default_kv_tokens=64)
    request = shard_pb2.LoadShardRequest(model="m", model_path=str(model_dir), dtype="float32", device="cpu",
                                         layers=wire.layer_range_to_proto(LayerRange(0, 1)), dry_run=True)
    try:
        with pytest.raises(Aborted) as e:
            asyncio.run(node.LoadShard(request, FakeContext()))
    finally:
        node.compute.shutdown(wait=True)
    return e.value


def test_load_shard_uses_the_same_reader(tmp_path: Path, smol_dir: Path) -> None:
    missing = _load(tmp_path)
    assert missing.code == grpc.StatusCode.NOT_FOUND and "config.json missing" in str(missing)
    shutil.copy(smol_dir / "config.json", tmp_path / "config.json")
    cfg = json.loads((tmp_path / "config.json").read_text())
    del cfg["vocab_size"]
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    invalid = _load(tmp_path)
    assert invalid.code == grpc.StatusCode.INVALID_ARGUMENT and "vocab_size" in str(invalid)
