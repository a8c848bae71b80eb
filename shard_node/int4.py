"""int4 weight-only quantization of a linear layer: asymmetric, one bf16 scale and zero per group of 32 inputs.

w = (q - 8) * scale + zero, q in 0..15 (gpt-fast's convention, the one PyTorch's CPU kernel reads), groups of 32
along in_features (SmolLM2's hidden 576 is not a multiple of 64; 32 is also the block of GGUF's Q4_0/Q4_1, so a
model dequantized from a Q4_1 GGUF gets its own levels back). Stored: the nibbles as
aten._convert_weight_to_int4pack_for_cpu packs them (uint8 [out, in/2]) and scales_and_zeros bf16
[in/32, out, 2]: 0.625 bytes per weight, 16% of float32.

Few rows (decode) run aten._weight_int4pack_mm_for_cpu on bf16 activations. Many rows (prefill) dequantize the
weight per call into a bf16 [in, out] matrix and run a dense bf16 matmul (oneDNN, AMX where the CPU has it). The
pack layout depends on the CPU's ISA (AVX-512: blocks of 64 outputs, a byte holding outputs j and j+32 of one
input; AVX2: blocks of 32; no AVX: blocks of 32, adjacent outputs in a byte); `cpu_int4` probes it once against
these layouts, and where none matches, the kernel runs for every row count. Measured (/tmp/q4/deqtime.py: 1
thread, one 576->1536 linear, best of 5, a 2-core Xeon with AVX-512/AMX shared with other jobs, so noisy):
  rows                       1    32    40    48    64   128   500
  int4 kernel               57  1001  1268  1479  1954  3951 15859  us
  dequantize + bf16 matmul   -  1601  1539  1561  1701  1910  2792  us  (dequantize alone: 1000-1340)
(a quieter run: kernel 59 / 692 / 832 at 1 / 32 / 40 rows, 10203 at 500; a bf16 weight 134 at 1 row, 927 at 500)
so the kernel for at most 48 rows, the dense path above: a 40-row prefill stays in the kernel, 500 rows take
2.8 ms instead of 15.9. Keeping a second, plain copy of the nibbles for the dense path would double the bytes
held (the point of int4 is fewer); chunking rows through the kernel costs the same per row (~21-30 us a row).
The CPU kernel needs out_features % 16 == 0 and in_features % 32 == 0 (`fits_int4`); other linears stay int8.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

GROUP = 32  # inputs per scale and zero
LEVELS = 15  # q in 0..LEVELS
OFFSET = 8  # w = (q - OFFSET) * scale + zero
OUT_MULTIPLE = 16  # out_features the CPU pack needs
KERNEL_MAX_ROWS = 48  # the measured crossover above
CHUNK_ROWS = 4096  # output rows quantized (and packed) at once; a multiple of every pack block


def fits_int4(in_features: int, out_features: int) -> bool:
    return in_features % GROUP == 0 and out_features % OUT_MULTIPLE == 0 and in_features > 0 and out_features > 0


@dataclass(frozen=True)
class NibbleLayout:
    """Where each weight's nibble sits in a packed uint8 [out, in/2] tensor: blocks of ``block`` outputs, each
    [in, block/2] bytes; a byte holds outputs j and j + block/2 of its block (``adjacent`` False: AVX-512 with 64,
    AVX2 with 32) or outputs 2j and 2j + 1 (``adjacent`` True: the CPU build without AVX, 32; our own packing)."""

    block: int
    adjacent: bool = False

    def fits(self, out_features: int) -> bool:
        return out_features % self.block == 0

    def signed_levels(self, packed: torch.Tensor, out_features: int, in_features: int) -> torch.Tensor:
        """int8 [in, out] holding q - 8: XOR 0x88 turns each nibble into q - 8 as a signed 4-bit number."""
        signed = (packed ^ 0x88).view(torch.int8).view(out_features // self.block, in_features, self.block // 2)
        low, high = ((signed << 4) >> 4).transpose(0, 1), (signed >> 4).transpose(0, 1)
        both = torch.stack((low, high), dim=3) if self.adjacent else torch.cat((low, high), dim=2)
        return both.reshape(in_features, out_features)

    def pack(self, q: torch.Tensor) -> torch.Tensor:
        """uint8 q [out, in] in 0..15 -> packed in this layout (for devices without the CPU kernel's own pack)."""
        out_features, in_features = q.shape
        blocks = q.view(out_features // self.block, self.block, in_features).transpose(1, 2)
        if self.adjacent:
            low, high = blocks[..., 0::2], blocks[..., 1::2]
        else:
            low, high = blocks[..., :self.block // 2], blocks[..., self.block // 2:]
        return (low | (high << 4)).contiguous().view(out_features, in_features // 2)


CANDIDATE_LAYOUTS = (NibbleLayout(64), NibbleLayout(32), NibbleLayout(32, adjacent=True))
PORTABLE_LAYOUT = NibbleLayout(OUT_MULTIPLE, adjacent=True)  # fits every out_features that fits_int4


@dataclass(frozen=True)
class CpuInt4:
    """What this CPU's int4 kernel offers: whether it runs correctly, and its pack layout (None: unknown)."""

    kernel: bool
    layout: NibbleLayout | None


_cpu_probe: list[CpuInt4] = []


def cpu_int4() -> CpuInt4:
    """Probed once: pack a seeded random matrix, find its layout, check the kernel against the dequantized weight."""
    if not _cpu_probe:
        try:
            q = torch.randint(0, LEVELS + 1, (128, 2 * GROUP), generator=torch.Generator().manual_seed(0))
            packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.to(torch.int32), 2)
            layout = next((c for c in CANDIDATE_LAYOUTS
                           if torch.equal(c.signed_levels(packed, 128, 2 * GROUP), (q - OFFSET).t().to(torch.int8))),
                          None)
            scales_and_zeros = torch.ones(2, 128, 2, dtype=torch.bfloat16)
            x = torch.ones(1, 2 * GROUP, dtype=torch.bfloat16)
            out = torch.ops.aten._weight_int4pack_mm_for_cpu(x, packed, GROUP, scales_and_zeros)
            expected = (q - OFFSET + 1).sum(dim=1).to(torch.bfloat16)
            _cpu_probe.append(CpuInt4(bool(torch.equal(out[0], expected)), layout))
        except (RuntimeError, NotImplementedError, AttributeError):
            _cpu_probe.append(CpuInt4(False, None))
    return _cpu_probe[0]


def _quantize_groups(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 q [out, in] and bf16 scales_and_zeros [in/32, out, 2]; min..max of each group on 16 levels."""
    out_features, in_features = rows.shape
    w = rows.float().view(out_features, in_features // GROUP, GROUP)
    low, high = w.amin(dim=2), w.amax(dim=2)
    scales = ((high - low) / LEVELS).to(torch.bfloat16)
    zeros = (low + OFFSET * scales.float()).to(torch.bfloat16)
    # Levels on the stored (bf16-rounded) grid, so (q - 8) * scale + zero is its nearest point; a constant group
    # (scale 0) keeps its value in the zero.
    grid_min = zeros.float() - OFFSET * scales.float()
    step = torch.where(scales > 0, scales.float(), torch.ones_like(low))
    q = ((w - grid_min[..., None]) / step[..., None]).round_().clamp_(0, LEVELS).to(torch.uint8)
    return q.view(out_features, in_features), torch.stack((scales, zeros), dim=2).transpose(0, 1)


def _pack(q: torch.Tensor, on_cpu_kernel: bool) -> torch.Tensor:
    if on_cpu_kernel:
        return torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.to(torch.int32), 2)
    return PORTABLE_LAYOUT.pack(q)


class Int4Linear(nn.Module):
    """y = x @ W.T + bias, W = (q - 8) * scale + zero per group of 32 inputs (see the module doc)."""

    def __init__(self, packed: torch.Tensor, scales_and_zeros: torch.Tensor, bias: torch.Tensor | None,
                 kernel: bool, layout: NibbleLayout | None) -> None:
        super().__init__()
        self.in_features, self.out_features = 2 * packed.shape[1], packed.shape[0]
        self.packed = nn.Parameter(packed, requires_grad=False)
        self.scales_and_zeros = nn.Parameter(scales_and_zeros, requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        self.kernel = kernel  # packed by and for aten._weight_int4pack_mm_for_cpu
        self.layout = layout if layout is not None and layout.fits(self.out_features) else None  # None: no dense

    @classmethod
    @torch.no_grad()
    def from_float(cls, weight: torch.Tensor, bias: torch.Tensor | None, transpose: bool = False) -> Int4Linear:
        """weight: [out, in] (or [in, out] with transpose=True), fits_int4; works on the meta device too."""
        rows = weight.t() if transpose else weight
        out_features, in_features = rows.shape
        bias = None if bias is None else bias.detach()
        if rows.is_meta:
            probe = cpu_int4()
            return cls(torch.empty(out_features, in_features // 2, dtype=torch.uint8, device="meta"),
                       torch.empty(in_features // GROUP, out_features, 2, dtype=torch.bfloat16, device="meta"),
                       bias, probe.kernel, probe.layout)
        return cls._packed(rows.device, out_features, lambda start, stop: _quantize_groups(rows[start:stop]), bias)

    @classmethod
    @torch.no_grad()
    def from_levels(cls, levels: torch.Tensor, scales: torch.Tensor, mins: torch.Tensor, bias: torch.Tensor | None
                    ) -> Int4Linear:
        """Given levels: w = levels * scales + mins per group of 32 inputs (GGUF's Q4_1; Q4_0 has mins = -8
        scales). levels uint8 [out, in] in 0..15; scales, mins [out, in / 32]. The levels are kept as they are;
        the kernel's scale and zero (zero = mins + 8 scales) are rounded to bf16."""
        zeros = mins.float() + OFFSET * scales.float()

        def chunk(start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
            sz = torch.stack((scales[start:stop].float(), zeros[start:stop]), dim=2).to(torch.bfloat16)
            return levels[start:stop], sz.transpose(0, 1)

        return cls._packed(levels.device, levels.shape[0], chunk, bias)

    @classmethod
    def _packed(cls, device: torch.device, out_features: int,
                chunk: Callable[[int, int], tuple[torch.Tensor, torch.Tensor]], bias: torch.Tensor | None
                ) -> Int4Linear:
        """Packs the (levels [rows, in], scales_and_zeros [in / 32, rows, 2]) that ``chunk(start, stop)`` gives
        for output rows [start, stop), chunk by chunk (float32 temporaries of a few MB, not of a whole head)."""
        probe = cpu_int4() if device.type == "cpu" else CpuInt4(False, None)
        # Known layouts are blocks of at most 64 outputs, so chunks of CHUNK_ROWS outputs pack independently.
        chunked = not probe.kernel or probe.layout is not None
        step = CHUNK_ROWS if chunked else out_features
        packed, scales = [], []
        for start in range(0, out_features, step):
            q, sz = chunk(start, start + step)
            packed.append(_pack(q, probe.kernel) if chunked else q)
            scales.append(sz)
        whole = torch.cat(packed) if chunked else _pack(torch.cat(packed), probe.kernel)
        layout = probe.layout if probe.kernel else PORTABLE_LAYOUT
        return cls(whole, torch.cat(scales, dim=1).contiguous(), bias, probe.kernel, layout)

    def uses_kernel(self, rows: int) -> bool:
        return self.kernel and (rows <= KERNEL_MAX_ROWS or self.layout is None)

    def dequantized_t(self) -> torch.Tensor:
        """bf16 W.T [in, out], as the kernel computes it: (q - 8) * scale + zero, rounded once."""
        assert self.layout is not None
        levels = self.layout.signed_levels(self.packed, self.out_features, self.in_features)
        groups = levels.view(self.in_features // GROUP, GROUP, self.out_features).to(torch.bfloat16)
        scales = self.scales_and_zeros[..., 0].unsqueeze(1).contiguous()
        zeros = self.scales_and_zeros[..., 1].unsqueeze(1).contiguous()
        return torch.addcmul(zeros, groups, scales).view(self.in_features, self.out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [..., in] any float dtype -> [..., out] in x.dtype
        rows = x.reshape(-1, self.in_features).to(torch.bfloat16).contiguous()
        if self.uses_kernel(rows.shape[0]):
            out = torch.ops.aten._weight_int4pack_mm_for_cpu(rows, self.packed, GROUP, self.scales_and_zeros)
        else:
            out = torch.matmul(rows, self.dequantized_t())
        out = out.to(x.dtype)
        if self.bias is not None:
            out = out + self.bias.to(out.dtype)
        return out.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, group={GROUP}, "
                f"bias={self.bias is not None}")


def int4_kernel_description(device: torch.device) -> str:
    dense = "dequantized bf16 matmul (nibbles unpacked per call)"
    head = (f"int4 weight-only (group {GROUP}; linears with in_features % {GROUP} or out_features % {OUT_MULTIPLE} "
            f"and the embedding / tied head stay int8)")
    probe = cpu_int4() if device.type in ("cpu", "meta") else CpuInt4(False, None)
    if not probe.kernel:
        return f"{head}: {dense} for all rows (aten._weight_int4pack_mm_for_cpu unavailable on {device.type})"
    if probe.layout is None:
        return f"{head}: aten._weight_int4pack_mm_for_cpu for all rows (unknown pack layout on this CPU)"
    return f"{head}: aten._weight_int4pack_mm_for_cpu (bf16 activations) for <={KERNEL_MAX_ROWS} rows, {dense} above"

