"""shard_node/gguf_weights.py: an int4 shard of a model prepared from a GGUF serves the GGUF's own Q4_1 levels."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from protos.data_structures import LayerRange
from protos.hf_config import GGUF_BLOCKS_FILE, read_hf_config
from shard_node.architectures import ModelSpec
from shard_node.gguf_weights import GgufBlocks
from shard_node.int4 import GROUP, Int4Linear
from shard_node.runner import ShardRunner


def _levels_scales_mins(out_features: int, in_features: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Q4_1-like blocks whose every group uses levels 0 and 15 (as llama.cpp's quantizer makes them)."""
    torch.manual_seed(0)
    levels = torch.randint(0, 16, (out_features, in_features), dtype=torch.uint8)
    levels[:, ::GROUP], levels[:, 1::GROUP] = 0, 15
    groups = in_features // GROUP
    scales = (torch.rand(out_features, groups) * 0.02 + 0.001).half()
    mins = (torch.randn(out_features, groups) * 0.05).half()
    return levels, scales, mins


def test_from_levels_keeps_the_levels_and_matches_quantizing_their_weights() -> None:
    levels, scales, mins = _levels_scales_mins(64, 128)
    weight = levels.float() * scales.float().repeat_interleave(GROUP, 1) + mins.float().repeat_interleave(GROUP, 1)
    given = Int4Linear.from_levels(levels, scales, mins, None)
    requantized = Int4Linear.from_float(weight, None)
    assert torch.equal(given.packed, requantized.packed)  # the same levels
    torch.testing.assert_close(given.dequantized_t().float(), weight.T, atol=0.004, rtol=0.01)  # bf16 scale, zero
    x = torch.randn(3, 128)
    torch.testing.assert_close(given(x), x @ weight.T, atol=0.05, rtol=0.02)


def test_an_int4_shard_of_smollm2_serves_the_gguf_levels(smollm2_dir: Path) -> None:
    spec = ModelSpec.from_hf_config(read_hf_config(smollm2_dir))
    runner = ShardRunner("m", smollm2_dir, spec, LayerRange(28, 30), torch.bfloat16, torch.device("cpu"), 64,
                         quantization="int4")
    assert "14 of 14 layer linears from the GGUF's own Q4_1 blocks" in runner.kernel
    layer = runner.model.layers["29"]
    module = layer.mlp.down_proj
    assert isinstance(module, Int4Linear)
    with safe_open(str(smollm2_dir / GGUF_BLOCKS_FILE), "pt") as f:
        name = "model.layers.29.mlp.down_proj.weight"
        levels, scales, mins = (f.get_tensor(f"{name}.{p}") for p in ("levels", "scales", "mins"))
    assert torch.equal(module.packed, Int4Linear.from_levels(levels, scales, mins, None).packed)


def test_a_model_without_blocks_quantizes_from_its_float_weights(tmp_path: Path) -> None:
    assert GgufBlocks.open(tmp_path, torch.device("cpu")) is None


@pytest.mark.parametrize("scheme", ["none", "int8"])
def test_only_int4_reads_the_blocks(smollm2_dir: Path, scheme: str) -> None:
    spec = ModelSpec.from_hf_config(read_hf_config(smollm2_dir))
    runner = ShardRunner("m", smollm2_dir, spec, LayerRange(29, 30), torch.bfloat16, torch.device("cpu"), 64,
                         quantization=scheme)
    assert runner.gguf is None and "GGUF" not in runner.kernel
