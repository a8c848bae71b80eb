"""int4 linears straight from a prepared model's GGUF blocks, so a node serves the same levels llama.cpp runs.

Preparing a model from a GGUF keeps its Q4_0 / Q4_1 / Q8_0 blocks in ``gguf-blocks.safetensors`` (levels, scales
and minimums under the checkpoint's tensor names; ops/gguf_blocks.py). With ``quantization: int4`` a layer's
linear whose blocks are Q4_0 or Q4_1 becomes an Int4Linear of those very levels (w = levels * d + m; the
kernel's scale and zero are d and m + 8 d rounded to bf16), instead of being quantized again from the float32
copy. What does not map is converted, and Info's kernel text says how many mapped:
- Q8_0 (SmolLM2's embedding and tied head): PyTorch's int8 kernel takes one scale per output row, not one per
  32 inputs, so those rows are quantized per row from the float copy (as for every int8 model);
- K-quants and float tensors: quantized from the float copy.
The float32 copy of each block is still read while loading (one block at a time) and dropped once it is replaced.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from protos.hf_config import GGUF_BLOCKS_FILE
from shard_node.int4 import Int4Linear, fits_int4
from shard_node.quantize import Int8Linear

INT4_TYPES = ("Q4_0", "Q4_1")


class GgufBlocks:
    """The blocks file of one model folder, read tensor by tensor."""

    def __init__(self, path: Path, device: torch.device) -> None:
        self.path, self.device = path, device
        with safe_open(str(path), "pt") as f:
            metadata = f.metadata() or {}
        self.types: dict[str, str] = json.loads(metadata.get("types", "{}"))  # checkpoint name -> block type
        self.mapped = 0  # linears served from their blocks so far

    @classmethod
    def open(cls, model_dir: Path, device: torch.device) -> GgufBlocks | None:
        path = model_dir / GGUF_BLOCKS_FILE
        return cls(path, device) if path.is_file() else None

    def int4_linear(self, name: str, linear: nn.Linear) -> Int4Linear | None:
        """The Int4Linear of checkpoint weight ``name`` from its Q4_0/Q4_1 blocks, or None where it has none."""
        if self.types.get(name) not in INT4_TYPES or not fits_int4(linear.in_features, linear.out_features):
            return None
        with safe_open(str(self.path), "pt", device=str(self.device)) as f:
            levels, scales, mins = (f.get_tensor(f"{name}.{part}") for part in ("levels", "scales", "mins"))
        if tuple(levels.shape) != (linear.out_features, linear.in_features):
            raise ValueError(f"{self.path}: {name} has levels of shape {list(levels.shape)}, the model's weight "
                             f"is [{linear.out_features}, {linear.in_features}]; prepare the model again")
        bias = None if linear.bias is None else linear.bias.detach()
        return Int4Linear.from_levels(levels, scales, mins, bias)

    def replace_linears(self, block: nn.Module, prefix: str) -> None:
        """Every nn.Linear of ``block`` (checkpoint names ``prefix`` + its path) with int4 blocks becomes their
        Int4Linear; the others are left for quantize_linears."""
        for parent_name, parent in list(block.named_modules()):
            for child_name, child in list(parent.named_children()):
                if not isinstance(child, nn.Linear):
                    continue
                path = f"{parent_name}.{child_name}" if parent_name else child_name
                quantized = self.int4_linear(f"{prefix}{path}.weight", child)
                if quantized is not None:
                    setattr(parent, child_name, quantized)
                    self.mapped += 1

    def describe(self, layers: nn.Module) -> str:
        """How many of the quantized linears in ``layers`` came from their blocks."""
        linears = sum(isinstance(m, (Int4Linear, Int8Linear)) for m in layers.modules())
        kinds = sorted({k for k in self.types.values() if k in INT4_TYPES})
        return (f"{self.mapped} of {linears} layer linears from the GGUF's own {'/'.join(kinds) or 'int4'} blocks "
                f"({GGUF_BLOCKS_FILE})")
