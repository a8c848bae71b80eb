"""The scale row's model: its shape and config as the services read them, and the streamed checkpoint (written
small here) as safetensors, transformers and a ShardRunner load it."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from bench.scale_model import MARKER, ScaleShape, ensure_model, fp32_bytes, hf_config, param_count, tensor_shapes
from coordinator.model_meta import read_model_meta
from protos.hf_config import read_hf_config
from shard_node.architectures import ModelSpec

TINY = ScaleShape(name="tiny-scale", num_layers=2, hidden=64, intermediate=128, heads=4, kv_heads=4, vocab=49152,
                  seed=7)


def test_default_shape_is_a_1_7b_llama() -> None:
    shape = ScaleShape()
    cfg = hf_config(shape)
    assert (cfg["model_type"], cfg["tie_word_embeddings"]) == ("llama", True)
    assert (cfg["num_hidden_layers"], cfg["hidden_size"], cfg["intermediate_size"]) == (24, 2048, 8192)
    assert (cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["vocab_size"]) == (32, 32, 49152)
    # embedding 49152 x 2048 + 24 x (4 x 2048^2 attention + 3 x 2048 x 8192 MLP + 2 norms) + final norm
    expected = 49152 * 2048 + 24 * (4 * 2048 * 2048 + 3 * 2048 * 8192 + 2 * 2048) + 2048
    assert param_count(shape) == expected
    assert 1.7e9 < param_count(shape) < 1.72e9
    assert fp32_bytes(shape) == 4 * expected
    names = [n for n, _ in tensor_shapes(shape)]
    assert "lm_head.weight" not in names and len(names) == len(set(names)) == 1 + 24 * 9 + 1


def test_written_model_is_read_by_the_coordinator_and_the_nodes(tmp_path: Path, smollm2_dir: Path) -> None:
    folder = ensure_model(TINY, tmp_path, smollm2_dir)
    meta = read_model_meta(folder)
    assert (meta.model_type, meta.num_layers, meta.vocab_size) == ("llama", 2, 49152)
    spec = ModelSpec.from_hf_config(read_hf_config(folder))
    assert (spec.num_layers, spec.hidden_size) == (2, 64)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (folder / name).read_bytes() == (smollm2_dir / name).read_bytes()


def test_checkpoint_holds_every_tensor_seeded_and_finite(tmp_path: Path, smollm2_dir: Path) -> None:
    from safetensors import safe_open

    folder = ensure_model(TINY, tmp_path, smollm2_dir)
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        assert sorted(f.keys()) == sorted(n for n, _ in tensor_shapes(TINY))
        for name, dims in tensor_shapes(TINY):
            t = f.get_tensor(name)
            assert tuple(t.shape) == dims and t.dtype == torch.bfloat16 and bool(torch.isfinite(t).all())
        q = f.get_tensor("model.layers.1.self_attn.q_proj.weight").float()
        assert 0.015 < float(q.std()) < 0.025
        assert bool((f.get_tensor("model.norm.weight") == 1).all())
    again = ensure_model(replace(TINY, name="tiny-again"), tmp_path, smollm2_dir)
    other = ensure_model(replace(TINY, name="tiny-other", seed=8), tmp_path, smollm2_dir)
    assert (again / "model.safetensors").read_bytes() == (folder / "model.safetensors").read_bytes()
    assert (other / "model.safetensors").read_bytes() != (folder / "model.safetensors").read_bytes()


def test_shard_runner_agrees_with_transformers_on_the_random_model(tmp_path: Path, smollm2_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    from bench.formats import greedy, load_runner

    folder = ensure_model(replace(TINY, disk_dtype="float32"), tmp_path, smollm2_dir)
    prompt = [1, 504, 3458, 314, 4649, 28, 15]
    hf = AutoModelForCausalLM.from_pretrained(str(folder), torch_dtype=torch.float32)
    with torch.no_grad():
        ref = hf.generate(torch.tensor([prompt]), max_new_tokens=6, do_sample=False, min_new_tokens=6)
    assert greedy(load_runner(folder), prompt, 6) == ref[0, len(prompt):].tolist()


def test_ensure_model_reuses_a_folder_of_the_same_shape_and_rewrites_another(tmp_path: Path,
                                                                              smollm2_dir: Path) -> None:
    folder = ensure_model(TINY, tmp_path, smollm2_dir)
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert ensure_model(TINY, tmp_path, smollm2_dir) == folder
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp
    (folder / MARKER).write_text(json.dumps({"seed": 0}))  # another shape (or a write cut short) is rewritten
    ensure_model(TINY, tmp_path, smollm2_dir)
    assert json.loads((folder / MARKER).read_text())["seed"] == TINY.seed


def test_missing_tokenizer_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="tokenizer files"):
        ensure_model(TINY, tmp_path / "cache", tmp_path / "nowhere")
