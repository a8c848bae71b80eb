"""The scale row's model: a seeded random-weight Llama with the shape of a 1.7B model, written once into a cache
folder as a HF-style checkpoint (config.json, model.safetensors, the SmolLM2 tokenizer files: same vocab).

Its outputs are meaningless, its speed is not. The safetensors file is written tensor by tensor (the format is an
8-byte header length, a JSON header, then the raw bytes), so the model is never whole in memory.

    python -m bench.scale_model [--cache-dir .cache/bench-scale]     # writes (or finds) it, prints its folder
"""

from __future__ import annotations

import json
import shutil
import struct
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO

from bench.procs import REPO

SCALE_CACHE_DIR = REPO / ".cache" / "bench-scale"
TOKENIZER_SOURCE = REPO / ".cache" / "models" / "smollm2-135m-instruct"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "generation_config.json")
MARKER = "bench-scale.json"  # written last: the folder is complete and of this shape
SAFETENSORS_DTYPES = {"bfloat16": ("BF16", 2), "float32": ("F32", 4)}
LINEAR_STD = 0.02  # the initializer_range of Llama configs: activations stay finite through the layers


@dataclass(frozen=True)
class ScaleShape:
    """A Llama's shape (SmolLM2-1.7B's by default) and how its random weights are made and stored."""

    name: str = "scale-llama-1.7b"
    num_layers: int = 24
    hidden: int = 2048
    intermediate: int = 8192
    heads: int = 32
    kv_heads: int = 32
    vocab: int = 49152
    max_context: int = 8192
    seed: int = 1234
    disk_dtype: str = "bfloat16"

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


def hf_config(shape: ScaleShape) -> dict[str, object]:
    """config.json of the model: model_type llama with tied embeddings, as SmolLM2."""
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
        "hidden_size": shape.hidden, "intermediate_size": shape.intermediate,
        "num_hidden_layers": shape.num_layers, "num_attention_heads": shape.heads,
        "num_key_value_heads": shape.kv_heads, "head_dim": shape.head_dim, "vocab_size": shape.vocab,
        "max_position_embeddings": shape.max_context, "rms_norm_eps": 1e-5, "rope_theta": 130000.0,
        "rope_scaling": None, "attention_bias": False, "mlp_bias": False, "tie_word_embeddings": True,
        "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2, "initializer_range": LINEAR_STD,
        "torch_dtype": shape.disk_dtype, "use_cache": True,
    }


def tensor_shapes(shape: ScaleShape) -> list[tuple[str, tuple[int, ...]]]:
    """Every checkpoint tensor in file order (HF Llama names; no lm_head: it is tied to the embedding)."""
    h, q, kv = shape.hidden, shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
    out: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (shape.vocab, h))]
    for i in range(shape.num_layers):
        p = f"model.layers.{i}."
        out += [(p + "input_layernorm.weight", (h,)), (p + "self_attn.q_proj.weight", (q, h)),
                (p + "self_attn.k_proj.weight", (kv, h)), (p + "self_attn.v_proj.weight", (kv, h)),
                (p + "self_attn.o_proj.weight", (h, q)), (p + "post_attention_layernorm.weight", (h,)),
                (p + "mlp.gate_proj.weight", (shape.intermediate, h)),
                (p + "mlp.up_proj.weight", (shape.intermediate, h)),
                (p + "mlp.down_proj.weight", (h, shape.intermediate))]
    out.append(("model.norm.weight", (h,)))
    return out


def _numel(dims: tuple[int, ...]) -> int:
    n = 1
    for d in dims:
        n *= d
    return n


def param_count(shape: ScaleShape) -> int:
    """Parameters of the checkpoint (the tied embedding counted once)."""
    return sum(_numel(dims) for _, dims in tensor_shapes(shape))


def fp32_bytes(shape: ScaleShape) -> int:
    """The model's size in float32: the figure the nodes' memory budgets are set below."""
    return 4 * param_count(shape)


def safetensors_header(shape: ScaleShape) -> bytes:
    """The file's header: its 8-byte little-endian length, then JSON padded with spaces to a multiple of 8."""
    code, size = SAFETENSORS_DTYPES[shape.disk_dtype]
    entries: dict[str, object] = {"__metadata__": {"format": "pt", "bench": "random weights, seed "
                                                   f"{shape.seed}"}}
    offset = 0
    for name, dims in tensor_shapes(shape):
        end = offset + _numel(dims) * size
        entries[name] = {"dtype": code, "shape": list(dims), "data_offsets": [offset, end]}
        offset = end
    text = json.dumps(entries, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text


def _write_tensor(f: BinaryIO, shape: ScaleShape, index: int, name: str, dims: tuple[int, ...]) -> None:
    import torch

    dtype = getattr(torch, shape.disk_dtype)
    if name.endswith("norm.weight"):
        t = torch.ones(dims, dtype=dtype)
    else:  # seeded per tensor: the same weights whatever order or subset is written
        gen = torch.Generator().manual_seed(shape.seed * 100_003 + index)
        t = (torch.randn(dims, generator=gen) * LINEAR_STD).to(dtype)
    f.write(t.contiguous().view(torch.uint8).numpy().tobytes())


def write_checkpoint(folder: Path, shape: ScaleShape) -> None:
    """config.json and model.safetensors into ``folder``, one tensor in memory at a time."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(hf_config(shape), indent=2))
    with open(folder / "model.safetensors", "wb") as f:
        f.write(safetensors_header(shape))
        for index, (name, dims) in enumerate(tensor_shapes(shape)):
            _write_tensor(f, shape, index, name, dims)


def is_prepared(folder: Path, shape: ScaleShape) -> bool:
    marker = folder / MARKER
    return marker.is_file() and json.loads(marker.read_text()) == asdict(shape)


def ensure_model(shape: ScaleShape, cache_dir: Path = SCALE_CACHE_DIR, tokenizer_source: Path = TOKENIZER_SOURCE
                 ) -> Path:
    """The model's folder in ``cache_dir``, written the first time (or when the shape changed)."""
    folder = cache_dir / shape.name
    if is_prepared(folder, shape):
        return folder
    missing = [n for n in TOKENIZER_FILES[:2] if not (tokenizer_source / n).is_file()]
    if missing:
        raise FileNotFoundError(f"scale model: tokenizer files {missing} not in {tokenizer_source}; prepare the "
                                "default model first (`python -m ops.models --config config.json`)")
    if folder.exists():
        shutil.rmtree(folder)
    write_checkpoint(folder, shape)
    for n in TOKENIZER_FILES:
        if (tokenizer_source / n).is_file():
            shutil.copy2(tokenizer_source / n, folder / n)
    (folder / MARKER).write_text(json.dumps(asdict(shape)))
    return folder


def main() -> None:
    import argparse

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cache-dir", type=Path, default=SCALE_CACHE_DIR)
    args = p.parse_args()
    print(ensure_model(ScaleShape(), args.cache_dir))  # noqa: T201


if __name__ == "__main__":
    main()
