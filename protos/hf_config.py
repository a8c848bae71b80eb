"""The one reader of a checkpoint's Hugging Face config.json (and generation_config.json): torch-free, used by the
coordinator (coordinator/model_meta.py) and by every shard node (shard_node/architectures.py via LoadShard)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

PREPARE_HINT = "prepare it with `shardline models` (or `make models`)"
GGUF_BLOCKS_FILE = "gguf-blocks.safetensors"  # a GGUF's own quantized blocks beside the float copy (ops/gguf_blocks)


class HfConfigError(ValueError):
    """A checkpoint's config.json (or generation_config.json) cannot be read, or lacks a field."""


class ModelNotPrepared(FileNotFoundError):
    """The model folder has no config.json: the model cache has no such model yet."""


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise HfConfigError(f"cannot read {path}: {e}") from None
    except json.JSONDecodeError as e:
        raise HfConfigError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise HfConfigError(f"{path} must hold a JSON object, got {type(value).__name__}")
    return value


def read_hf_config(model_dir: Path) -> dict[str, Any]:
    """The checkpoint's config.json as a dict; ModelNotPrepared when it is missing, HfConfigError when invalid."""
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise ModelNotPrepared(f"no model at {model_dir} (config.json missing); {PREPARE_HINT}")
    return _read_json(path)


def read_generation_config(model_dir: Path) -> dict[str, Any]:
    """generation_config.json as a dict ({} when the checkpoint has none)."""
    path = Path(model_dir) / "generation_config.json"
    return _read_json(path) if path.is_file() else {}


def eos_token_ids(model_dir: Path, cfg: Mapping[str, object]) -> tuple[int, ...]:
    """The ids that end generation: generation_config.json's, else config.json's (``cfg``)."""
    return tuple(token_ids(read_generation_config(model_dir).get("eos_token_id")) or token_ids(cfg.get("eos_token_id")))


def int_field(cfg: Mapping[str, object], *names: str, default: int | None = None) -> int:
    """The first of ``names`` that config.json sets (HF spells some fields per architecture: num_hidden_layers or
    n_layer), as an int; ``default`` when none is set, else HfConfigError naming them."""
    for name in names:
        value = cfg.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
            raise HfConfigError(f"config.json field {name} must be an integer, got {value!r}")
        return int(value)
    if default is None:
        raise HfConfigError(f"config.json has no {' or '.join(names)}")
    return default


def token_ids(value: object) -> list[int]:
    """An ``eos_token_id`` as HF writes it: absent, one id or a list of ids."""
    if value is None:
        return []
    if isinstance(value, int) and not isinstance(value, bool):
        return [value]
    if isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return list(value)
    raise HfConfigError(f"eos_token_id must be a token id or a list of them, got {value!r}")
