"""What the coordinator reads about a prepared model: layer count, context length, vocab, EOS ids."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


class ModelNotPrepared(FileNotFoundError):
    """The model cache has no such model yet."""


@dataclass(frozen=True)
class ModelMeta:
    path: Path
    model_type: str
    num_layers: int
    max_context: int
    vocab_size: int
    eos_token_ids: tuple[int, ...]
    head_cost: float = 0.0  # the LM head's decode work in layer-equivalents (weights per token)


def _as_ids(value: object) -> list[int]:
    if value is None:
        return []
    if isinstance(value, int):
        return [value]
    return [int(v) for v in value]  # type: ignore[union-attr]


def read_model_meta(model_dir: Path, max_context_cap: int | None = None) -> ModelMeta:
    cfg_file = model_dir / "config.json"
    if not cfg_file.is_file():
        raise ModelNotPrepared(f"model folder {model_dir} has no config.json; run `shardline models` "
                               f"(or `make models`) to prepare it")
    cfg = json.loads(cfg_file.read_text())
    gen_file = model_dir / "generation_config.json"
    gen = json.loads(gen_file.read_text()) if gen_file.is_file() else {}
    eos = _as_ids(gen.get("eos_token_id")) or _as_ids(cfg.get("eos_token_id"))
    num_layers = cfg.get("num_hidden_layers", cfg.get("n_layer"))
    max_context = cfg.get("max_position_embeddings", cfg.get("n_positions", 2048))
    if max_context_cap:
        max_context = min(max_context, max_context_cap)
    return ModelMeta(model_dir, cfg.get("model_type", ""), int(num_layers), int(max_context), int(cfg["vocab_size"]),
                     tuple(eos), head_cost(cfg))


def head_cost(cfg: dict[str, object]) -> float:
    """vocab x hidden over one layer's matmul weights: how many layers one LM-head row costs."""
    hidden = int(cfg.get("hidden_size", cfg.get("n_embd", 0)))  # type: ignore[arg-type]
    vocab = int(cfg.get("vocab_size", 0))  # type: ignore[arg-type]
    if not hidden or not vocab:
        return 0.0
    if cfg.get("model_type") == "gpt2":
        layer = 12 * hidden * hidden  # qkv 3h^2 + proj h^2 + mlp 8h^2
    else:
        heads = int(cfg.get("num_attention_heads", 1))  # type: ignore[arg-type]
        kv_heads = int(cfg.get("num_key_value_heads") or heads)  # type: ignore[arg-type]
        head_dim = int(cfg.get("head_dim") or hidden // heads)  # type: ignore[arg-type]
        inter = int(cfg.get("intermediate_size", 4 * hidden))  # type: ignore[arg-type]
        layer = 2 * hidden * heads * head_dim + 2 * hidden * kv_heads * head_dim + 3 * hidden * inter
    return vocab * hidden / layer
