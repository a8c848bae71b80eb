"""Loads only the tensors of one shard from a safetensors checkpoint (lazy safe_open, no full load)."""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from pathlib import Path

import torch
from safetensors import safe_open
from tqdm import tqdm

from shard_node.shard_model import ShardModel

logger = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """The checkpoint folder is missing files or tensors."""


def checkpoint_files(model_dir: Path) -> dict[str, Path]:
    """Checkpoint tensor name -> the safetensors file that holds it."""
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return {name: model_dir / fname for name, fname in weight_map.items()}
    single = model_dir / "model.safetensors"
    if not single.is_file():
        raise CheckpointError(f"{model_dir} has neither model.safetensors nor model.safetensors.index.json")
    with safe_open(str(single), framework="pt") as f:
        return {name: single for name in f.keys()}


def load_shard_weights(model: ShardModel, model_dir: Path, dtype: torch.dtype, device: torch.device,
                       show_progress: bool = True) -> None:
    """Copies this shard's tensors in; the model must have been built on the meta device."""
    locations = checkpoint_files(model_dir)
    wanted = model.checkpoint_keys()
    missing = [ck for ck in wanted.values() if ck not in locations]
    if missing:
        raise CheckpointError(f"checkpoint {model_dir} lacks {len(missing)} tensor(s) of this shard, "
                              f"e.g. {missing[:3]}")
    by_file: dict[Path, list[tuple[str, str]]] = defaultdict(list)
    for local, ck in wanted.items():
        by_file[locations[ck]].append((local, ck))
    state: dict[str, torch.Tensor] = {}
    bar = tqdm(total=len(wanted), desc=f"loading layers {model.layer_range}", unit="tensor",
               disable=not show_progress, mininterval=0.5)
    for path, names in by_file.items():
        with safe_open(str(path), framework="pt", device="cpu") as f:
            for local, ck in names:
                state[local] = f.get_tensor(ck).to(device=device, dtype=dtype)
                bar.update(1)
    bar.close()
    model.load_state_dict(state, strict=True, assign=True)
    if model.rotary is not None:
        model.rotary.to(device)
