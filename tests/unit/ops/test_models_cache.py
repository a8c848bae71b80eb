"""shardline models: a local Hugging Face folder is copied into the cache once; later runs do nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from ops.models import MARKER, SourceError, is_prepared, prepare_model


def test_local_folder_prepared_once(tmp_path: Path) -> None:
    torch.manual_seed(0)
    src = tmp_path / "src"
    LlamaForCausalLM(LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=2)).save_pretrained(src, safe_serialization=True)
    cache = tmp_path / "cache"
    out = prepare_model("tiny", str(src), cache)
    assert is_prepared(out) and (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    stamp = (out / MARKER).stat().st_mtime_ns
    assert prepare_model("tiny", str(src), cache) == out
    assert (out / MARKER).stat().st_mtime_ns == stamp  # idempotent: nothing rewritten
    assert not list(cache.glob(".*partial"))


def test_unknown_source_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="neither a path nor an installed package"):
        prepare_model("x", "no-such-package-xyz", tmp_path)
