"""shard_node.int4: Int4Linear against the weight PyTorch's int4 kernel itself reads (its product with the identity),
the nibble layouts against the CPU's own pack, the portable path (devices without the CPU kernel), and levels
recovered from a Q4_1-style weight (what a model dequantized from a GGUF holds)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from shard_node import int4
from shard_node.architectures import Conv1D
from shard_node.int4 import (
    CANDIDATE_LAYOUTS,
    CHUNK_ROWS,
    GROUP,
    KERNEL_MAX_ROWS,
    PORTABLE_LAYOUT,
    CpuInt4,
    Int4Linear,
    NibbleLayout,
    cpu_int4,
    fits_int4,
)
from shard_node.quantize import Int8Linear, kernel_description, quantize_linears

pytestmark = pytest.mark.usefixtures("single_torch_thread")
CPU = torch.device("cpu")


def _kernel_weight(q: Int4Linear) -> torch.Tensor:
    """W [out, in] as aten._weight_int4pack_mm_for_cpu computes with it: the kernel times the identity."""
    eye = torch.eye(q.in_features, dtype=torch.bfloat16)
    return torch.ops.aten._weight_int4pack_mm_for_cpu(eye, q.packed, GROUP, q.scales_and_zeros).t().float()


def _reference_weight(q: Int4Linear) -> torch.Tensor:
    """W [out, in] from the portable layout's nibbles, written out element by element (no layout code shared)."""
    packed = q.packed.view(q.out_features // 16, q.in_features, 8)
    levels = torch.empty(q.out_features, q.in_features)
    for j in range(8):  # byte j of a block of 16 outputs: outputs 2j (low nibble) and 2j + 1 (high nibble)
        levels[2 * j::16] = (packed[:, :, j] & 15).float()
        levels[2 * j + 1::16] = (packed[:, :, j] >> 4).float()
    scales = q.scales_and_zeros[..., 0].float().t().repeat_interleave(GROUP, dim=1)
    zeros = q.scales_and_zeros[..., 1].float().t().repeat_interleave(GROUP, dim=1)
    return (levels - 8) * scales + zeros


@pytest.fixture
def portable(monkeypatch: pytest.MonkeyPatch) -> None:
    """As on a device without aten's CPU int4 kernel: our own packing, the dense path for every row count."""
    monkeypatch.setattr(int4, "cpu_int4", lambda: CpuInt4(False, None))


def test_this_cpu_packs_in_a_known_layout() -> None:
    probe = cpu_int4()
    assert probe.kernel and probe.layout in CANDIDATE_LAYOUTS, probe  # x86 builds: AVX-512, AVX2 or neither


@pytest.mark.parametrize("layout", [*CANDIDATE_LAYOUTS, PORTABLE_LAYOUT])
def test_layouts_unpack_what_they_pack(layout: NibbleLayout) -> None:
    q = torch.randint(0, 16, (128, 96), generator=torch.Generator().manual_seed(3), dtype=torch.uint8)
    signed = layout.signed_levels(layout.pack(q), 128, 96)
    assert signed.dtype == torch.int8 and torch.equal(signed, (q.to(torch.int8) - 8).t())


@pytest.mark.parametrize("rows", [1, KERNEL_MAX_ROWS, KERNEL_MAX_ROWS + 1, 100])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("out_features", [128, 80])  # 80: not a multiple of 32 or 64, so no dense path there
def test_int4_linear_matches_the_weight_the_kernel_reads(rows: int, dtype: torch.dtype, with_bias: bool,
                                                         out_features: int) -> None:
    g = torch.Generator().manual_seed(rows)
    weight = torch.randn(out_features, 96, generator=g)
    weight[5, :GROUP] = 0.0  # an all-zero group: scale 0, its zero holds the value
    bias = torch.randn(out_features, generator=g) if with_bias else None
    q = Int4Linear.from_float(weight, bias)
    assert q.packed.dtype == torch.uint8 and q.packed.shape == (out_features, 48)
    assert q.scales_and_zeros.dtype == torch.bfloat16 and q.scales_and_zeros.shape == (3, out_features, 2)
    kernel_weight = _kernel_weight(q)
    assert torch.all(kernel_weight[5, :GROUP] == 0.0)
    dense = q.layout is not None and q.layout.fits(out_features)
    assert q.uses_kernel(rows) == (rows <= KERNEL_MAX_ROWS or not dense)
    if dense:  # the dense path dequantizes to the very bf16 weights the kernel uses
        assert torch.equal(q.dequantized_t().float().t(), kernel_weight)
    x = torch.randn(rows, 96, generator=g).to(dtype)
    out = q(x)
    assert out.dtype == dtype and out.shape == (rows, out_features)
    ref = F.linear(x.float(), kernel_weight, bias)
    # bf16 activations and output (0.4% per element): 2% of the largest output is far above that rounding and
    # far below what a wrong nibble order, scale or zero would give.
    assert (out.float() - ref).abs().max() <= 0.02 * ref.abs().max()


@pytest.mark.parametrize("rows", [1, KERNEL_MAX_ROWS + 1])
@pytest.mark.usefixtures("portable")
def test_without_the_cpu_kernel_the_portable_layout_runs_dense(rows: int) -> None:
    g = torch.Generator().manual_seed(11)
    weight, bias = torch.randn(48, 64, generator=g), torch.randn(48, generator=g)
    q = Int4Linear.from_float(weight, bias)
    assert not q.kernel and q.layout == PORTABLE_LAYOUT and not q.uses_kernel(rows)
    assert "for all rows" in kernel_description("int4", torch.device("cuda"))
    x = torch.randn(rows, 64, generator=g)
    ref = F.linear(x, _reference_weight(q), bias)
    assert (q(x) - ref).abs().max() <= 0.02 * ref.abs().max()
    assert (_reference_weight(q) - weight).abs().max() <= 0.55 * (weight.amax() - weight.amin()) / 15


def test_quantization_error_is_half_a_level() -> None:
    weight = torch.randn(64, 128, generator=torch.Generator().manual_seed(0))
    q = Int4Linear.from_float(weight, None)
    groups = weight.view(64, -1, GROUP)
    step = ((groups.amax(dim=2) - groups.amin(dim=2)) / 15).repeat_interleave(GROUP, dim=1)
    # Round to nearest on 16 levels of (max - min) / 15, plus the bf16 rounding of scale and zero.
    assert torch.all((_kernel_weight(q) - weight).abs() <= 0.5 * step + 0.01 * weight.abs().amax())


def test_levels_of_a_q4_1_weight_come_back() -> None:
    """A Q4_1 block is w = q * d + m with min and max among its levels: int4 finds the same q for every weight."""
    g = torch.Generator().manual_seed(5)
    levels = torch.randint(0, 16, (64, 256), generator=g)
    levels[:, ::GROUP], levels[:, 1::GROUP] = 0, 15  # each block spans its range, as Q4_1's quantizer makes it
    d = (torch.rand(64, 8, 1, generator=g) * 0.02 + 0.001).half().float()
    m = (-8 * d + torch.randn(64, 8, 1, generator=g) * 0.01).half().float()
    weight = (levels.view(64, 8, GROUP) * d + m).view(64, 256)
    q = Int4Linear.from_float(weight, None)
    signed = q.layout.signed_levels(q.packed, 64, 256) if q.layout else None
    assert signed is not None and torch.equal(signed.t().long() + 8, levels)


def test_chunked_quantization_packs_like_one_piece() -> None:
    weight = torch.randn(CHUNK_ROWS + 64, 64, generator=torch.Generator().manual_seed(2))
    q = Int4Linear.from_float(weight, None)
    levels, scales_and_zeros = int4._quantize_groups(weight)
    whole = torch.ops.aten._convert_weight_to_int4pack_for_cpu(levels.to(torch.int32), 2)
    assert torch.equal(q.packed, whole) and torch.equal(q.scales_and_zeros, scales_and_zeros)


def test_from_conv1d_transposes_gpt2_weight() -> None:
    conv = Conv1D(64, 48)
    nn.init.normal_(conv.weight, generator=torch.Generator().manual_seed(0))
    nn.init.normal_(conv.bias, generator=torch.Generator().manual_seed(1))
    q = Int4Linear.from_float(conv.weight, conv.bias, transpose=True)
    assert (q.in_features, q.out_features) == (64, 48)
    x = torch.randn(3, 64, generator=torch.Generator().manual_seed(2))
    assert F.cosine_similarity(q(x).flatten(), conv(x).detach().flatten(), dim=0) > 0.99


def test_linears_int4_cannot_hold_stay_int8() -> None:
    block = nn.Sequential(nn.Linear(64, 128), nn.Linear(40, 64), nn.Linear(64, 72), Conv1D(64, 32))
    quantize_linears(block, "int4")
    assert [type(m) for m in block] == [Int4Linear, Int8Linear, Int8Linear, Int4Linear]
    assert fits_int4(576, 192) and not fits_int4(576, 49160) and not fits_int4(40, 64)


def test_meta_int4_linear_sizes_like_the_real_one() -> None:
    real = Int4Linear.from_float(torch.randn(192, 576), torch.zeros(192))
    meta = Int4Linear.from_float(torch.empty(192, 576, device="meta"), torch.empty(192, device="meta"))
    assert [(p.shape, p.dtype) for p in meta.parameters()] == [(p.shape, p.dtype) for p in real.parameters()]
    assert sum(p.nbytes for p in real.parameters()) == 192 * 576 * 5 // 8 + 192 * 4


def test_kernel_description_names_the_int4_kernels() -> None:
    text = kernel_description("int4", CPU)
    assert "int4" in text and "_weight_int4pack_mm_for_cpu" in text and f"<={KERNEL_MAX_ROWS} rows" in text
