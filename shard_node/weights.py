"""Loads only the tensors of one shard from a safetensors checkpoint (lazy safe_open, no full load)."""

from __future__ import annotations

import json
import logging
import math
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn
from tqdm import tqdm

from shard_node.shard_model import ShardModel

logger = logging.getLogger(__name__)
CHUNK_BYTES = 16 * 2**20  # a tensor larger than this is converted to another dtype in row chunks
FLOAT_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}  # safetensors' names


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


LayerLoaded = Callable[[nn.Module], None]  # called with each transformer block once its tensors are in


def load_shard_weights(model: ShardModel, model_dir: Path, dtype: torch.dtype, device: torch.device,
                       show_progress: bool = True, on_layer_loaded: LayerLoaded | None = None) -> None:
    """Copies this shard's tensors in; the model must have been built on the meta device.

    One unit at a time (a transformer block, the embedding, the norm, the head), each file opened for that unit
    only: pages of the checkpoint read to convert a tensor to ``dtype`` leave the process with the unit, and
    ``on_layer_loaded`` (e.g. quantization) runs before the next block is read, so a node never holds the whole
    shard in float when it keeps it in fewer bytes."""
    locations = checkpoint_files(model_dir)
    wanted = model.checkpoint_keys()
    missing = [ck for ck in wanted.values() if ck not in locations]
    if missing:
        raise CheckpointError(f"checkpoint {model_dir} lacks {len(missing)} tensor(s) of this shard, "
                              f"e.g. {missing[:3]}")
    bar = tqdm(total=len(wanted), desc=f"loading layers {model.layer_range}", unit="tensor",
               disable=not show_progress, mininterval=0.5)
    for unit, names in _units(wanted).items():
        state = _read(names, locations, dtype, device, bar)
        if unit in model.layers:
            block = model.layers[unit]
            block.load_state_dict({local.split(".", 2)[2]: t for local, t in state.items()}, strict=True, assign=True)
            if on_layer_loaded is not None:
                on_layer_loaded(block)
        else:
            model.load_state_dict(state, strict=False, assign=True)
        del state
    bar.close()
    left = [name for name, p in model.named_parameters() if p.is_meta]
    if left:
        raise CheckpointError(f"checkpoint {model_dir} left {len(left)} parameter(s) unset, e.g. {left[:3]}")
    if model.rotary is not None:
        model.rotary.to(device)


def _units(wanted: dict[str, str]) -> dict[str, list[tuple[str, str]]]:
    """(local, checkpoint) names grouped by what loads together: "17" for layers.17.*, else the tensor's name."""
    units: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for local, ck in wanted.items():
        units[local.split(".")[1] if local.startswith("layers.") else local].append((local, ck))
    return units


def _read(names: list[tuple[str, str]], locations: dict[str, Path], dtype: torch.dtype, device: torch.device,
          bar: tqdm) -> dict[str, torch.Tensor]:
    by_file: dict[Path, list[tuple[str, str]]] = defaultdict(list)
    for local, ck in names:
        by_file[locations[ck]].append((local, ck))
    state: dict[str, torch.Tensor] = {}
    for path, in_file in by_file.items():
        with safe_open(str(path), framework="pt", device="cpu") as f:
            for local, ck in in_file:
                piece = f.get_slice(ck)
                shape, stored = piece.get_shape(), FLOAT_DTYPES.get(piece.get_dtype())
                if stored is not None and stored != dtype and shape and \
                        math.prod(shape) * stored.itemsize > CHUNK_BYTES:
                    state[local] = _converted_in_chunks(path, ck, shape, stored, dtype, device)
                else:
                    # a copy even in the stored dtype: a tensor left on the file's memory map would keep every
                    # page read so far mapped (counted in RSS) and break if the file is replaced while serving
                    state[local] = f.get_tensor(ck).to(device=device, dtype=dtype, copy=True)
                bar.update(1)
    return state


def _converted_in_chunks(path: Path, name: str, shape: list[int], stored: torch.dtype, dtype: torch.dtype,
                         device: torch.device) -> torch.Tensor:
    """A large tensor converted to ``dtype`` a few MB at a time, the file opened for each chunk: the float pages
    read leave the process chunk by chunk (measured on SmolLM2's embedding, float32 -> bfloat16: 81 MB above the
    result instead of 166)."""
    out = torch.empty(shape, dtype=dtype, device=device)
    rows = max(1, CHUNK_BYTES // (math.prod(shape[1:]) * stored.itemsize))
    for start in range(0, shape[0], rows):
        with safe_open(str(path), framework="pt", device="cpu") as f:
            out[start:start + rows] = f.get_slice(name)[start:start + rows].to(device=device, dtype=dtype)
    return out
