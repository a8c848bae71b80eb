"""What the coordinator reads about a prepared model: layer count, context length, vocab, EOS ids."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from protos.hf_config import eos_token_ids, int_field, read_hf_config


@dataclass(frozen=True)
class ModelMeta:
    path: Path
    model_type: str
    num_layers: int
    max_context: int
    vocab_size: int
    eos_token_ids: tuple[int, ...]
    head_cost: float = 0.0  # the LM head's decode work in layer-equivalents (weights per token)


def read_model_meta(model_dir: Path, max_context_cap: int | None = None) -> ModelMeta:
    """ModelNotPrepared (a FileNotFoundError) when the folder has no config.json, HfConfigError when it is invalid."""
    cfg = read_hf_config(model_dir)
    eos = eos_token_ids(model_dir, cfg)
    num_layers = int_field(cfg, "num_hidden_layers", "n_layer")
    max_context = int_field(cfg, "max_position_embeddings", "n_positions", default=2048)
    if max_context_cap:
        max_context = min(max_context, max_context_cap)
    return ModelMeta(model_dir, str(cfg.get("model_type", "")), num_layers, max_context,
                     int_field(cfg, "vocab_size"), tuple(eos), head_cost(cfg))


def head_cost(cfg: dict[str, object]) -> float:
    """vocab x hidden over one layer's matmul weights: how many layers one LM-head row costs."""
    hidden = int_field(cfg, "hidden_size", "n_embd", default=0)
    vocab = int_field(cfg, "vocab_size", default=0)
    if not hidden or not vocab:
        return 0.0
    if cfg.get("model_type") == "gpt2":
        layer = 12 * hidden * hidden  # qkv 3h^2 + proj h^2 + mlp 8h^2
    else:
        heads = int_field(cfg, "num_attention_heads", default=1)
        kv_heads = int_field(cfg, "num_key_value_heads", default=0) or heads
        head_dim = int_field(cfg, "head_dim", default=0) or hidden // heads
        inter = int_field(cfg, "intermediate_size", default=4 * hidden)
        layer = 2 * hidden * heads * head_dim + 2 * hidden * kv_heads * head_dim + 3 * hidden * inter
    return vocab * hidden / layer
