"""A shard is built on the meta device without random initialization: sizing and loading it do not import
torch._dynamo (initializing a meta tensor did: 1.4 s and 800 modules at every node's first LoadShard)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

from protos.data_structures import LayerRange
from shard_node.architectures import ModelSpec
from shard_node.shard_model import INIT_FUNCTIONS, ShardModel

LLAMA = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 256, "hidden_size": 32,
         "intermediate_size": 64, "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2,
         "max_position_embeddings": 64, "rms_norm_eps": 1e-5, "tie_word_embeddings": True}

ROOT = Path(__file__).resolve().parents[3]
SIZE_A_SHARD = f"""
import sys, torch
from protos.data_structures import LayerRange
from shard_node.architectures import ModelSpec
from shard_node.load_plan import shard_size
size = shard_size(ModelSpec.from_hf_config({LLAMA!r}), LayerRange(0, 3), torch.float32, 64)
assert size.weight_bytes > 0
print("torch._dynamo" in sys.modules)
"""


def test_sizing_a_shard_does_not_import_dynamo() -> None:
    out = subprocess.run([sys.executable, "-c", SIZE_A_SHARD], capture_output=True, text=True, timeout=120,
                         cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_the_meta_model_has_every_parameter_and_init_is_restored() -> None:
    saved = {name: getattr(torch.nn.init, name) for name in INIT_FUNCTIONS}
    model = ShardModel.on_meta(ModelSpec.from_hf_config(LLAMA), LayerRange(0, 3))
    assert all(p.is_meta for p in model.parameters())
    assert {name: getattr(torch.nn.init, name) for name in INIT_FUNCTIONS} == saved
    assert "embed_tokens.weight" in dict(model.named_parameters())
