"""Per-architecture decoder pieces in plain PyTorch: no gRPC, no config.json, no metrics.

Blocks run a ragged micro-batch: x is [N, D], the rows of several sequences stacked (a prefill
chunk or one decode token each). Projections and MLPs run once on all N rows; attention reads and
writes the shard's paged KV pool (shard_node/attention.py).
Parameter names mirror the Hugging Face checkpoints so weights load by name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from protos.hf_config import int_field
from shard_node.attention import PagedBatch, paged_attention

LLAMA_FAMILY = ("llama", "mistral", "qwen2", "smollm", "smollm3")
SUPPORTED_MODEL_TYPES = (*LLAMA_FAMILY, "gpt2")


class UnsupportedArchitecture(ValueError):
    """The checkpoint's model_type has no adapter."""


@dataclass(frozen=True)
class ModelSpec:
    """What a shard needs to know about a checkpoint's shape, read from its HF config.json."""

    model_type: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    max_positions: int
    tie_word_embeddings: bool
    raw: dict[str, Any]

    @classmethod
    def from_hf_config(cls, cfg: dict[str, Any]) -> ModelSpec:
        """From a checkpoint's config.json as protos.hf_config reads it; HfConfigError names a missing field."""
        model_type = cfg.get("model_type", "")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise UnsupportedArchitecture(f"model_type {model_type!r} is not supported; supported: "
                                          f"{', '.join(SUPPORTED_MODEL_TYPES)}")
        if model_type == "gpt2":
            hidden, heads = int_field(cfg, "n_embd"), int_field(cfg, "n_head")
            return cls(model_type, int_field(cfg, "n_layer"), hidden, heads, heads, hidden // heads,
                       int_field(cfg, "vocab_size"), int_field(cfg, "n_positions", default=1024),
                       cfg.get("tie_word_embeddings", True), cfg)
        hidden, heads = int_field(cfg, "hidden_size"), int_field(cfg, "num_attention_heads")
        return cls(model_type, int_field(cfg, "num_hidden_layers"), hidden, heads,
                   int_field(cfg, "num_key_value_heads", default=0) or heads,
                   int_field(cfg, "head_dim", default=0) or hidden // heads, int_field(cfg, "vocab_size"),
                   int_field(cfg, "max_position_embeddings", default=2048), cfg.get("tie_word_embeddings", False), cfg)

    @property
    def layer_prefix(self) -> str:
        return "transformer.h." if self.model_type == "gpt2" else "model.layers."

    @property
    def embed_key(self) -> str:
        return "transformer.wte.weight" if self.model_type == "gpt2" else "model.embed_tokens.weight"

    @property
    def norm_prefix(self) -> str:
        return "transformer.ln_f." if self.model_type == "gpt2" else "model.norm."


# ---------------------------------------------------------------- Llama family (Llama, Mistral, Qwen2, SmolLM)

class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x32 = x.to(torch.float32)
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(dtype)


class RotaryEmbedding(nn.Module):
    """cos/sin tables for given positions.

    Plain rope is computed here; scaled variants (linear, dynamic, yarn, llama3, ...) use transformers'
    own initialisers, imported only then (the import costs a node about 70 MB of memory).
    """

    inv_freq: torch.Tensor  # a buffer (registered below)

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        rope_scaling = spec.raw.get("rope_scaling") or {}
        rope_type = rope_scaling.get("rope_type", rope_scaling.get("type", "default"))
        if rope_type == "default" and spec.raw.get("partial_rotary_factor", 1.0) == 1.0:
            base = float(spec.raw.get("rope_theta", 10000.0))
            exponents = torch.arange(0, spec.head_dim, 2, dtype=torch.int64).float() / spec.head_dim
            inv_freq, self.attention_scaling = 1.0 / (base ** exponents), 1.0
        else:
            from transformers import AutoConfig
            from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

            hf_config = AutoConfig.for_model(**spec.raw)
            inv_freq, self.attention_scaling = ROPE_INIT_FUNCTIONS[rope_type](  # type: ignore[operator]
                hf_config, torch.device("cpu"))  # transformers' table is inferred as dict[str, function]: uncallable
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        # positions: [T] -> cos, sin: [T, head_dim]
        freqs = positions.to(torch.float32)[:, None] * self.inv_freq.to(torch.float32)[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        return (emb.cos() * self.attention_scaling).to(dtype), (emb.sin() * self.attention_scaling).to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class LlamaAttention(nn.Module):
    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        d, h, kv, hd = spec.hidden_size, spec.num_heads, spec.num_kv_heads, spec.head_dim
        qkv_bias = bool(spec.raw.get("attention_bias", False)) or spec.model_type == "qwen2"
        o_bias = bool(spec.raw.get("attention_bias", False)) and spec.model_type != "qwen2"
        self.q_proj = nn.Linear(d, h * hd, bias=qkv_bias)
        self.k_proj = nn.Linear(d, kv * hd, bias=qkv_bias)
        self.v_proj = nn.Linear(d, kv * hd, bias=qkv_bias)
        self.o_proj = nn.Linear(h * hd, d, bias=o_bias)
        self.num_heads, self.num_kv_heads, self.head_dim = h, kv, hd

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], batch: PagedBatch, layer: int
                ) -> torch.Tensor:
        n = x.shape[0]
        q = self.q_proj(x).view(n, self.num_heads, self.head_dim)
        k = self.k_proj(x).view(n, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x).view(n, self.num_kv_heads, self.head_dim)
        cos, sin = rope  # [N, 1, hd]
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        return self.o_proj(paged_attention(q, k, v, batch, layer))


class LlamaMLP(nn.Module):
    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        d, i = spec.hidden_size, spec.raw["intermediate_size"]
        bias = bool(spec.raw.get("mlp_bias", False))
        self.gate_proj = nn.Linear(d, i, bias=bias)
        self.up_proj = nn.Linear(d, i, bias=bias)
        self.down_proj = nn.Linear(i, d, bias=bias)
        act = spec.raw.get("hidden_act", "silu")
        if act not in ("silu", "swish"):
            raise UnsupportedArchitecture(f"hidden_act {act!r} is not supported for {spec.model_type}; allowed: silu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class LlamaBlock(nn.Module):
    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        eps = spec.raw.get("rms_norm_eps", 1e-6)
        self.input_layernorm = RMSNorm(spec.hidden_size, eps)
        self.self_attn = LlamaAttention(spec)
        self.post_attention_layernorm = RMSNorm(spec.hidden_size, eps)
        self.mlp = LlamaMLP(spec)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], batch: PagedBatch, layer: int
                ) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), rope, batch, layer)
        return x + self.mlp(self.post_attention_layernorm(x))


# ---------------------------------------------------------------- GPT-2

class Conv1D(nn.Module):
    """GPT-2's linear layer with a [in, out] weight."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_in, n_out))
        self.bias = nn.Parameter(torch.zeros(n_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.bias, x, self.weight)


class GPT2Attention(nn.Module):
    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.c_attn = Conv1D(spec.hidden_size, 3 * spec.hidden_size)
        self.c_proj = Conv1D(spec.hidden_size, spec.hidden_size)
        self.num_heads, self.head_dim = spec.num_heads, spec.head_dim
        self.scale = 1 / math.sqrt(spec.head_dim) if spec.raw.get("scale_attn_weights", True) else 1.0

    def forward(self, x: torch.Tensor, rope: None, batch: PagedBatch, layer: int) -> torch.Tensor:
        n = x.shape[0]
        q, k, v = (z.view(n, self.num_heads, self.head_dim)
                   for z in self.c_attn(x).split(self.num_heads * self.head_dim, dim=-1))
        return self.c_proj(paged_attention(q, k, v, batch, layer, scale=self.scale))


class GPT2MLP(nn.Module):
    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        inner = spec.raw.get("n_inner") or 4 * spec.hidden_size
        self.c_fc = Conv1D(spec.hidden_size, inner)
        self.c_proj = Conv1D(inner, spec.hidden_size)
        act = spec.raw.get("activation_function", "gelu_new")
        if act not in ("gelu_new", "gelu", "gelu_pytorch_tanh"):
            raise UnsupportedArchitecture(f"activation_function {act!r} is not supported for gpt2")
        self.approximate = "none" if act == "gelu" else "tanh"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.gelu(self.c_fc(x), approximate=self.approximate))


class GPT2Block(nn.Module):
    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        eps = spec.raw.get("layer_norm_epsilon", 1e-5)
        self.ln_1 = nn.LayerNorm(spec.hidden_size, eps=eps)
        self.attn = GPT2Attention(spec)
        self.ln_2 = nn.LayerNorm(spec.hidden_size, eps=eps)
        self.mlp = GPT2MLP(spec)

    def forward(self, x: torch.Tensor, rope: None, batch: PagedBatch, layer: int) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), rope, batch, layer)
        return x + self.mlp(self.ln_2(x))


def make_block(spec: ModelSpec) -> nn.Module:
    return GPT2Block(spec) if spec.model_type == "gpt2" else LlamaBlock(spec)


def make_final_norm(spec: ModelSpec) -> nn.Module:
    if spec.model_type == "gpt2":
        return nn.LayerNorm(spec.hidden_size, eps=spec.raw.get("layer_norm_epsilon", 1e-5))
    return RMSNorm(spec.hidden_size, spec.raw.get("rms_norm_eps", 1e-6))
