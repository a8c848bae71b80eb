"""shard_node.quantize: Int8Linear against the dequantized float weight, and quantized shards (int8 and int4) of
tiny seeded random-weight models (Llama tied and untied, GPT-2) chained by hand against the float model."""

from __future__ import annotations

from copy import deepcopy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from protos.data_structures import LayerRange
from shard_node.architectures import Conv1D, ModelSpec
from shard_node.attention import plan_batch
from shard_node.int4 import GROUP, KERNEL_MAX_ROWS, Int4Linear
from shard_node.kv_cache import KVCache, SequenceCache
from shard_node.quantize import PACKED_MAX_ROWS, Int8Embedding, Int8Linear, kernel_description, quantize_shard
from shard_node.shard_model import ShardModel

NUM_LAYERS = 4
VOCAB = 1000
PROMPT = 56  # > PACKED_MAX_ROWS and KERNEL_MAX_ROWS: the prefill runs the dense path, the decode step the kernel
# Observed on these seeded models: int8 cosine >= 0.9985 (Llama) and 0.9998 (GPT-2) for logits and final hidden;
# 0.995 allows about three times the observed 1 - cosine. int4's 16 levels move these random Gaussian weights
# too far for a useful bound (cosine 0.86 against float: its accuracy is bounded on the real SmolLM2 in
# test_weight_format_quality.py), so int4 shards are checked against the same shards with every Int4Linear
# replaced by a float nn.Linear of its dequantized weight: what is left is bf16 activations (observed >= 0.9997).
MIN_COSINE = 0.995
# Bytes of the layers against float32: int8 + a bf16 scale per row; int4 + a bf16 scale and zero per 32 inputs
# (0.625 of a byte per weight), the float32 norms and biases on top.
LAYER_BYTES = {"int8": (0.25, 0.3), "int4": (0.15, 0.18)}
HEAD = {"int8": Int8Linear, "int4": Int4Linear}
SPLITS = {"single": [(0, 4)], "first+last": [(0, 2), (2, 4)], "first+middle+last": [(0, 1), (1, 3), (3, 4)]}

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def _spec(arch: str) -> ModelSpec:
    if arch == "gpt2":
        return ModelSpec.from_hf_config({"model_type": "gpt2", "n_embd": 64, "n_head": 4, "n_layer": NUM_LAYERS,
                                         "vocab_size": VOCAB, "n_positions": 256})
    return ModelSpec.from_hf_config({
        "model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
        "num_key_value_heads": 2, "num_hidden_layers": NUM_LAYERS, "vocab_size": VOCAB,
        "max_position_embeddings": 256, "tie_word_embeddings": arch == "llama-tied"})


def _full_state(spec: ModelSpec) -> dict[str, torch.Tensor]:
    torch.manual_seed(1234)
    model = ShardModel(spec, LayerRange(0, spec.num_layers))
    with torch.no_grad():
        for p in model.parameters():  # random everything, norms and biases included
            p.normal_(0.0, 0.2).add_(1.0 if p.dim() == 1 and p.shape[0] == spec.hidden_size else 0.0)
    return model.state_dict()


def _shard(spec: ModelSpec, a: int, b: int, state: dict[str, torch.Tensor]) -> ShardModel:
    shard = ShardModel(spec, LayerRange(a, b))
    shard.load_state_dict({k: state[k].clone() for k in shard.state_dict()}, strict=True)
    return shard.eval()


def _caches(shards: list[ShardModel]) -> list[tuple[KVCache, SequenceCache]]:
    """A KV pool per shard, each holding one sequence of PROMPT + 1 positions."""
    spec = shards[0].spec
    pools = [KVCache(s.layer_range.length, spec.num_kv_heads, spec.head_dim, PROMPT + 1, torch.float32,
                     torch.device("cpu")) for s in shards]
    return [(pool, pool.allocate("s", PROMPT + 1, owner=0)) for pool in pools]


@torch.no_grad()
def _chain(shards: list[ShardModel], caches: list[tuple[KVCache, SequenceCache]], tokens: list[int],
           start: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(final hidden, logits) of tokens at positions start.. through every shard, as the pipeline runs them."""
    positions = torch.arange(start, start + len(tokens))
    x = shards[0].embed(torch.tensor(tokens), positions)
    for shard, (pool, entry) in zip(shards, caches):
        x = shard.forward_layers(x, positions, plan_batch(pool, [entry], [start], [len(tokens)]))
    return x, shards[-1].logits(x)


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0))


# ---------------------------------------------------------------- Int8Linear

def _dequantized(q: Int8Linear) -> torch.Tensor:
    return q.qweight.float() * q.scales.float()[:, None]


@pytest.mark.parametrize("rows", [1, PACKED_MAX_ROWS, PACKED_MAX_ROWS + 1, 40])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("in_features", [64, 40])  # 40: not a multiple of 16, always the dense path
def test_int8_linear_matches_the_dequantized_weight(rows: int, dtype: torch.dtype, with_bias: bool,
                                                    in_features: int) -> None:
    g = torch.Generator().manual_seed(rows)
    weight = torch.randn(96, in_features, generator=g)
    weight[5] = 0.0  # an all-zero row: scale 1, no division by zero
    bias = torch.randn(96, generator=g) if with_bias else None
    q = Int8Linear.from_float(weight, bias)
    assert q.qweight.dtype == torch.int8 and q.scales.dtype == torch.bfloat16
    assert float(q.scales[5]) == 1.0 and not q.qweight[5].any()
    assert q.uses_packed_kernel(rows, torch.device("cpu")) == (rows <= PACKED_MAX_ROWS and in_features == 64)
    x = torch.randn(rows, in_features, generator=g).to(dtype)
    out = q(x)
    assert out.dtype == dtype and out.shape == (rows, 96)
    ref = F.linear(x.float(), _dequantized(q), bias)
    # Activations run in bf16 (8 significant bits: 0.4% per element) and so does the output: allow 2% of the
    # largest output, far above that rounding and far below what a wrong scale or transpose would give.
    assert (out.float() - ref).abs().max() <= 0.02 * ref.abs().max()
    assert torch.all(out[:, 5].float() == (0.0 if bias is None else bias[5].to(dtype).float()))


def test_int8_quantization_error_is_small_against_the_float_weight() -> None:
    weight = torch.randn(128, 64, generator=torch.Generator().manual_seed(0))
    q = Int8Linear.from_float(weight, None)
    # Round to nearest on a grid of absmax/127 (bf16 scale): at most half a step per element, plus the scale's rounding.
    step = weight.abs().amax(dim=1, keepdim=True) / 127
    assert torch.all((_dequantized(q) - weight).abs() <= 0.51 * step + 0.004 * weight.abs())


def test_from_conv1d_transposes_gpt2_weight() -> None:
    torch.manual_seed(0)
    conv = Conv1D(64, 48)
    nn.init.normal_(conv.weight)
    nn.init.normal_(conv.bias)
    q = Int8Linear.from_conv1d(conv)
    assert (q.in_features, q.out_features) == (64, 48)
    x = torch.randn(3, 64)
    assert _cosine(q(x), conv(x).detach()) > 0.999


# ---------------------------------------------------------------- quantize_shard

def _int4_dequantized(shard: ShardModel) -> ShardModel:
    """A copy of a quantized shard whose Int4Linear modules are float nn.Linear of the weights the kernel reads."""
    copy = deepcopy(shard)
    for parent in list(copy.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, Int4Linear):
                linear = nn.Linear(child.in_features, child.out_features, bias=child.bias is not None)
                eye = torch.eye(child.in_features, dtype=torch.bfloat16)
                with torch.no_grad():
                    linear.weight.copy_(torch.ops.aten._weight_int4pack_mm_for_cpu(
                        eye, child.packed, GROUP, child.scales_and_zeros).t())
                    if child.bias is not None:
                        linear.bias.copy_(child.bias)
                setattr(parent, name, linear)
    return copy


@pytest.mark.parametrize("scheme", ["int8", "int4"])
@pytest.mark.parametrize("split", list(SPLITS))
@pytest.mark.parametrize("arch", ["llama", "llama-tied", "gpt2"])
def test_quantized_chain_stays_close_to_the_float_model(arch: str, split: str, scheme: str) -> None:
    spec = _spec(arch)
    state = _full_state(spec)
    floats = [_shard(spec, a, b, state) for a, b in SPLITS[split]]
    quantized = [_shard(spec, a, b, state) for a, b in SPLITS[split]]
    for shard in quantized:
        float_layer_bytes = shard.layer_weight_bytes()
        quantize_shard(shard, scheme)
        assert not [m for m in shard.layers.modules() if isinstance(m, (nn.Linear, Conv1D))]
        assert all(isinstance(m, HEAD[scheme]) for m in shard.layers.modules() if hasattr(m, "out_features"))
        low, high = LAYER_BYTES[scheme]
        assert low <= shard.layer_weight_bytes() / float_layer_bytes < high
    last = quantized[-1]
    # The head is int4 only where int4 fits it (the vocabulary of 1000 is not a multiple of 16) and it is untied.
    assert isinstance(last.lm_head, Int8Linear)
    # A tied non-first last shard held the embedding only as its head: freed once the head is int8.
    assert (floats[-1].embed_tokens is None) == (not last.is_first and not spec.tie_word_embeddings)
    assert (last.embed_tokens is None) == (not last.is_first)
    first = quantized[0]
    assert isinstance(first.embed_tokens, Int8Embedding) and first.embed_tokens.dtype == torch.float32
    if first is last and spec.tie_word_embeddings:  # one int8 table serves the lookup and the head
        assert isinstance(last.lm_head, Int8Linear) and last.lm_head.qweight is first.embed_tokens.qweight
        assert sum(1 for p in last.parameters() if p.dtype == torch.int8 and p.shape[0] == VOCAB) == 1

    references = floats if scheme == "int8" else [_int4_dequantized(shard) for shard in quantized]
    prompt = torch.randint(0, VOCAB, (PROMPT + 1,), generator=torch.Generator().manual_seed(7)).tolist()
    float_caches, quant_caches = _caches(references), _caches(quantized)
    for tokens, start in ((prompt[:PROMPT], 0), (prompt[PROMPT:], PROMPT)):  # prefill, then one decode row
        float_hidden, float_logits = _chain(references, float_caches, tokens, start)
        quant_hidden, quant_logits = _chain(quantized, quant_caches, tokens, start)
        assert quant_logits.dtype == torch.float32 and quant_logits.shape == (len(tokens), VOCAB)
        assert _cosine(quant_hidden, float_hidden) > MIN_COSINE
        assert _cosine(quant_logits, float_logits) > MIN_COSINE


@pytest.mark.parametrize("arch", ["llama", "llama-tied", "gpt2"])
@pytest.mark.parametrize("layers", [(0, 4), (0, 2), (1, 3), (2, 4)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_meta_quantized_shard_sizes_like_the_real_one(arch: str, layers: tuple[int, int], dtype: torch.dtype,
                                                      scheme: str) -> None:
    spec = _spec(arch)
    real = _shard(spec, *layers, _full_state(spec)).to(dtype)  # loaded in dtype, then quantized
    meta = ShardModel.on_meta(spec, LayerRange(*layers)).to(dtype)
    quantize_shard(real, scheme)
    quantize_shard(meta, scheme)
    assert meta.weight_bytes() == real.weight_bytes()
    assert meta.layer_weight_bytes() == real.layer_weight_bytes()
    assert all(p.device.type == "meta" for p in meta.parameters())


def test_scheme_none_leaves_the_shard_as_it_was() -> None:
    spec = _spec("llama-tied")
    shard = _shard(spec, 2, 4, _full_state(spec))
    before = shard.weight_bytes()
    quantize_shard(shard, "none")
    assert shard.weight_bytes() == before and shard.lm_head is None and shard.embed_tokens is not None


def test_unknown_scheme_names_the_allowed_ones() -> None:
    shard = ShardModel.on_meta(_spec("llama"), LayerRange(0, 1))
    with pytest.raises(ValueError, match="'int2'.*allowed: none, int8, int4"):
        quantize_shard(shard, "int2")
    with pytest.raises(ValueError, match="allowed: none, int8, int4"):
        kernel_description("fp8", torch.device("cpu"))


def test_kernel_description_names_the_kernels() -> None:
    cpu = torch.device("cpu")
    assert "_weight_int8pack_mm" in kernel_description("int8", cpu)
    assert f"<={PACKED_MAX_ROWS} rows" in kernel_description("int8", cpu)
    assert "float" in kernel_description("none", cpu)
    assert f"<={KERNEL_MAX_ROWS} rows" in kernel_description("int4", cpu)
