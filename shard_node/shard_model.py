"""A model's layers [start, end), the embedding on the first shard, final norm and head on the last."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.nn import init

from protos.data_structures import LayerRange
from shard_node.architectures import ModelSpec, RotaryEmbedding, make_block, make_final_norm
from shard_node.attention import PagedBatch

# What nn.Linear, nn.Embedding and the norms call from reset_parameters() when they are built.
INIT_FUNCTIONS = ("uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_", "xavier_uniform_",
                  "xavier_normal_", "kaiming_uniform_", "kaiming_normal_")
_init_lock = threading.Lock()


def _left_as_is(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    return tensor


@contextmanager
def without_init() -> Iterator[None]:
    """Modules built in this block skip their random initialization (as transformers' no_init_weights does): every
    weight of a shard comes from the checkpoint. Initializing a meta tensor imports torch._dynamo (measured: 1.4 s
    of every node's first LoadShard, and 800 modules)."""
    with _init_lock:
        saved = {name: getattr(init, name) for name in INIT_FUNCTIONS}
        try:
            for name in INIT_FUNCTIONS:
                setattr(init, name, _left_as_is)
            yield
        finally:
            for name, function in saved.items():
                setattr(init, name, function)


class ShardModel(nn.Module):
    @classmethod
    def on_meta(cls, spec: ModelSpec, layers: LayerRange) -> ShardModel:
        """The shard's modules on the meta device, uninitialized: for sizing, or for loading weights into."""
        with torch.device("meta"), without_init():
            return cls(spec, layers)

    def __init__(self, spec: ModelSpec, layers: LayerRange) -> None:
        super().__init__()
        if layers.end > spec.num_layers:
            raise ValueError(f"layer range {layers} is outside the model's {spec.num_layers} layers")
        self.spec = spec
        self.layer_range = layers
        self.is_first = layers.start == 0
        self.is_last = layers.end == spec.num_layers
        # Keyed by global layer index so checkpoint names (model.layers.17.*) map one to one.
        self.layers = nn.ModuleDict({str(i): make_block(spec) for i in range(layers.start, layers.end)})
        needs_embedding = self.is_first or (self.is_last and spec.tie_word_embeddings)
        # An nn.Embedding, or after quantize_shard an Int8Embedding (int8 rows, dequantized on lookup).
        self.embed_tokens: nn.Module | None = (
            nn.Embedding(spec.vocab_size, spec.hidden_size) if needs_embedding else None)
        self.position_embed = (
            nn.Embedding(spec.max_positions, spec.hidden_size) if self.is_first and spec.model_type == "gpt2" else None
        )
        self.norm = make_final_norm(spec) if self.is_last else None
        # An nn.Linear, or after quantize_shard any module mapping [N, D] -> [N, vocab] (e.g. Int8Linear).
        self.lm_head: nn.Module | None = (
            nn.Linear(spec.hidden_size, spec.vocab_size, bias=False)
            if self.is_last and not spec.tie_word_embeddings else None
        )
        self.rotary: RotaryEmbedding | None = None
        if spec.model_type != "gpt2":
            with torch.device("cpu"):  # real tables even when the rest is built on the meta device
                self.rotary = RotaryEmbedding(spec)

    def checkpoint_keys(self) -> dict[str, str]:
        """Maps each of this module's parameter names to its name in the checkpoint."""
        spec = self.spec
        keys: dict[str, str] = {}
        for name, _ in self.named_parameters():
            if name.startswith("layers."):
                _, idx, rest = name.split(".", 2)
                keys[name] = f"{spec.layer_prefix}{idx}.{rest}"
            elif name == "embed_tokens.weight":
                keys[name] = spec.embed_key
            elif name == "position_embed.weight":
                keys[name] = "transformer.wpe.weight"
            elif name.startswith("norm."):
                keys[name] = spec.norm_prefix + name.split(".", 1)[1]
            elif name == "lm_head.weight":
                keys[name] = "lm_head.weight"
            else:  # pragma: no cover - a new module without a mapping is a programming error
                raise AssertionError(f"no checkpoint name for parameter {name}")
        return keys

    def embed(self, token_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        # token_ids, positions: [T] -> [T, D]; only the first shard embeds (a quantized tied last shard may have
        # dropped embed_tokens, which it held only as the head)
        assert self.embed_tokens is not None and self.is_first, "only the first shard embeds tokens"
        x = self.embed_tokens(token_ids)
        if self.position_embed is not None:
            x = x + self.position_embed(positions)
        return x

    def forward_layers(self, x: torch.Tensor, positions: torch.Tensor, batch: PagedBatch) -> torch.Tensor:
        """x: [N, D], the stacked rows of batch's sequences; positions: [N] each row's position."""
        rope = None
        if self.rotary is not None:
            cos, sin = self.rotary(positions, x.dtype)
            rope = (cos.unsqueeze(1), sin.unsqueeze(1))  # [N, 1, hd]: broadcast over heads
        for i, block in enumerate(self.layers.values()):
            x = block(x, rope, batch, i)
        return x

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        # hidden: [N, D] -> [N, vocab] in float32
        assert self.norm is not None
        h = self.norm(hidden)
        if self.lm_head is not None and not isinstance(self.lm_head, nn.Linear):
            return self.lm_head(h).float()  # a quantized head
        head = self.lm_head if self.lm_head is not None else self.embed_tokens  # tied: the embedding is the head
        assert isinstance(head, (nn.Linear, nn.Embedding))
        return (h @ head.weight.T).float()  # the float path, kept as is: bit-identical to transformers in fp32

    def layer_weight_bytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.layers.parameters())

    def weight_bytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.parameters())
