"""A GGUF's own quantized blocks, kept beside the prepared safetensors so a node can serve the same bits llama.cpp
runs (see shard_node/gguf_weights.py).

Preparing a model from a GGUF dequantizes it to float32 safetensors (transformers' loader), which every dtype
and format can load. This module also writes ``gguf-blocks.safetensors`` beside them: for each linear weight
stored as Q4_0, Q4_1 or Q8_0, its levels, scales and minimums under the checkpoint's own tensor name, rows in the
checkpoint's order (llama.cpp stores the rows of q_proj and k_proj permuted for its rope layout; they are put
back). Every block covers 32 consecutive inputs of one output row:
  Q4_1: w = d * q + m,        q in 0..15  -> ``<name>.levels`` uint8, ``.scales`` (d) and ``.mins`` (m) float16
  Q4_0: w = d * (q - 8),      q in 0..15  -> the same, with m = -8 d
  Q8_0: w = d * q,            q in -128..127 -> ``.levels`` int8 and ``.scales``
Other block types (K-quants, F16, ...) are not written: those weights are quantized from the float32 copy.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from protos.hf_config import GGUF_BLOCKS_FILE

logger = logging.getLogger(__name__)

BLOCKS_FILE = GGUF_BLOCKS_FILE
GROUP = 32  # inputs per block, for the three types kept
LLAMA_NAMES = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
               "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
               "ffn_down": "mlp.down_proj"}
KEPT_TYPES = ("Q4_0", "Q4_1", "Q8_0")


def checkpoint_name(gguf_name: str) -> str | None:
    """The HF (Llama) name of a GGUF tensor, or None for one that is not a linear weight kept here."""
    if gguf_name == "output.weight":
        return "lm_head.weight"
    if gguf_name == "token_embd.weight":
        return "model.embed_tokens.weight"
    parts = gguf_name.split(".")
    if len(parts) == 4 and parts[0] == "blk" and parts[3] == "weight" and parts[2] in LLAMA_NAMES:
        return f"model.layers.{parts[1]}.{LLAMA_NAMES[parts[2]]}.weight"
    return None


def unpermute_rows(rows: int, heads: int) -> np.ndarray:
    """Row order that undoes llama.cpp's rope permutation of a q_proj / k_proj weight: hf = gguf[order]."""
    half = rows // heads // 2
    return np.arange(rows).reshape(heads, half, 2).swapaxes(1, 2).reshape(rows)


def decode_blocks(kind: str, raw: np.ndarray) -> dict[str, np.ndarray]:
    """raw: uint8 [rows, blocks * block bytes] -> levels [rows, blocks * 32], scales (and mins) [rows, blocks]."""
    rows = raw.shape[0]
    if kind == "Q8_0":
        blocks = raw.reshape(rows, -1, 34)
        scales = blocks[:, :, :2].copy().view(np.float16)[:, :, 0]
        levels = blocks[:, :, 2:].copy().view(np.int8).reshape(rows, -1)
        return {"levels": levels, "scales": scales}
    size = 20 if kind == "Q4_1" else 18
    blocks = raw.reshape(rows, -1, size)
    scales = blocks[:, :, :2].copy().view(np.float16)[:, :, 0]
    mins = blocks[:, :, 2:4].copy().view(np.float16)[:, :, 0] if kind == "Q4_1" else (-8 * scales.astype(
        np.float32)).astype(np.float16)
    packed = blocks[:, :, size - 16:]  # byte j holds input j (low nibble) and input j + 16 (high nibble)
    levels = np.concatenate([packed & 0x0F, packed >> 4], axis=2).reshape(rows, -1)
    if kind == "Q4_0" and not np.array_equal(mins.astype(np.float32), -8 * scales.astype(np.float32)):
        raise ValueError("a Q4_0 scale whose -8 d is not exact in float16")  # pragma: no cover - d <= 2**12
    return {"levels": levels.astype(np.uint8), "scales": scales, "mins": mins}


def write_blocks(gguf_path: Path, out_dir: Path) -> int:
    """Writes BLOCKS_FILE for a Llama-family GGUF; returns the number of weights kept (0: none, no file)."""
    from gguf import GGUFReader
    from safetensors.numpy import save_file

    reader = GGUFReader(str(gguf_path))
    arch = bytes(reader.fields["general.architecture"].parts[-1]).decode()
    heads = int(reader.fields[f"{arch}.attention.head_count"].parts[-1][0])
    kv_field = reader.fields.get(f"{arch}.attention.head_count_kv")
    kv_heads = int(kv_field.parts[-1][0]) if kv_field is not None else heads
    if arch != "llama":
        logger.info("%s: %s, not a Llama-family GGUF: its weights are quantized from the float copy", gguf_path.name,
                    arch)
        return 0
    tensors: dict[str, np.ndarray] = {}
    kinds: dict[str, str] = {}
    for t in reader.tensors:
        name, kind = checkpoint_name(t.name), t.tensor_type.name
        if name is None or kind not in KEPT_TYPES:
            continue
        parts = decode_blocks(kind, np.asarray(t.data))
        if name.endswith(("q_proj.weight", "k_proj.weight")):
            order = unpermute_rows(parts["levels"].shape[0], heads if "q_proj" in name else kv_heads)
            parts = {k: v[order] for k, v in parts.items()}
        for key, value in parts.items():
            tensors[f"{name}.{key}"] = np.ascontiguousarray(value)
        kinds[name] = kind
    if not tensors:
        logger.info("%s: no Q4_0/Q4_1/Q8_0 weights to keep", gguf_path.name)
        return 0
    partial = out_dir / f".{BLOCKS_FILE}.partial"  # nodes may be reading the folder: appear whole or not at all
    save_file(tensors, str(partial), metadata={"types": json.dumps(kinds), "source": gguf_path.name})
    partial.rename(out_dir / BLOCKS_FILE)
    logger.info("kept %d quantized weights of %s in %s", len(kinds), gguf_path.name, BLOCKS_FILE)
    return len(kinds)
