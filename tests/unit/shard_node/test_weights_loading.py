"""A shard loads one transformer block at a time: a quantized shard's blocks are quantized as they arrive, so the
node never holds the whole shard in float, and the result equals quantizing after a full load."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from protos.data_structures import LayerRange
from shard_node.architectures import ModelSpec
from shard_node.quantize import Int8Linear, quantize_linears, quantize_shard
from shard_node.shard_model import ShardModel
from shard_node.weights import CheckpointError, load_shard_weights

LAYERS = 4


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ModelSpec]:
    torch.manual_seed(7)
    cfg = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=LAYERS,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      tie_word_embeddings=True)
    path = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(cfg).save_pretrained(str(path), safe_serialization=True)
    return path, ModelSpec.from_hf_config(cfg.to_dict())


def test_each_block_is_quantized_before_the_next_is_read(checkpoint: tuple[Path, ModelSpec]) -> None:
    path, spec = checkpoint
    model = ShardModel.on_meta(spec, LayerRange(0, LAYERS))
    seen: list[tuple[int, list[bool]]] = []

    def quantize_and_look(block: nn.Module) -> None:
        index = next(int(k) for k, b in model.layers.items() if b is block)
        quantize_linears(block)
        later = [any(p.is_meta for p in b.parameters()) for k, b in model.layers.items() if int(k) > index]
        seen.append((index, later))

    load_shard_weights(model, path, torch.bfloat16, torch.device("cpu"), show_progress=False,
                       on_layer_loaded=quantize_and_look)
    assert [i for i, _ in seen] == list(range(LAYERS))
    assert all(all(later) for _, later in seen)  # every later block was still unread (on meta)
    assert not any(isinstance(m, nn.Linear) for m in model.layers.modules())


def test_quantizing_while_loading_equals_quantizing_after(checkpoint: tuple[Path, ModelSpec]) -> None:
    path, spec = checkpoint
    streamed = ShardModel.on_meta(spec, LayerRange(1, LAYERS))
    load_shard_weights(streamed, path, torch.float32, torch.device("cpu"), show_progress=False,
                       on_layer_loaded=quantize_linears)
    quantize_shard(streamed, "int8")
    after = ShardModel.on_meta(spec, LayerRange(1, LAYERS))
    load_shard_weights(after, path, torch.float32, torch.device("cpu"), show_progress=False)
    quantize_shard(after, "int8")
    a, b = dict(streamed.named_parameters()), dict(after.named_parameters())
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert isinstance(streamed.lm_head, Int8Linear) and streamed.embed_tokens is None  # tied head, last shard


def test_a_missing_tensor_names_it(checkpoint: tuple[Path, ModelSpec], tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    path, spec = checkpoint
    state = load_file(str(path / "model.safetensors"))
    del state["model.layers.2.mlp.up_proj.weight"]
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match="up_proj"):
        load_shard_weights(ShardModel.on_meta(spec, LayerRange(0, LAYERS)), tmp_path, torch.float32,
                           torch.device("cpu"), show_progress=False)
