"""int8 weight-only quantization of a loaded shard's linear layers (symmetric, one scale per output channel).

Few rows (decode) run PyTorch's packed kernel aten._weight_int8pack_mm on bf16 activations; many rows
(prefill) run a dense bf16 matmul on the int8 values cast to bf16, scaled per output channel after it.
Measured on this machine (/tmp/q8/cross2.py: 1 thread, 20 linears 576->1536, a shared 2-core Xeon, so noisy):
  rows        1     4     8    12    16    20    32    64
  int8pack  2.2   2.8   8.4  12.5  18.0  20.5  29.9  56.0  ms
  dense     19.8  17.0  20.8  16.8  16.7  19.9  18.1  20.1  ms  (F.linear(x, q.to(bf16)) * scales)
so the crossover is at about 16 rows. Dequantizing first (q.to(bf16) * scales[:, None], then F.linear) measured
20-50 ms at every row count: scaling the [T, out] output is cheaper than scaling the [out, in] weight.
The packed kernel needs in_features % 16 == 0 on CPU (torch 2.13: 72 gave inf/nan, 70 and 40 crashed the
process), so other widths take the dense path at every row count.

int4 (shard_node/int4.py: Int4Linear, group-wise) replaces the linears of the layers and an untied head; the
embedding and a tied head stay int8 rows (one table for both, as above), and so do linears int4 cannot hold.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from protos.model_spec import ALLOWED_QUANTIZATIONS
from shard_node.architectures import Conv1D
from shard_node.int4 import Int4Linear, fits_int4, int4_kernel_description
from shard_node.shard_model import ShardModel

SCHEMES = ALLOWED_QUANTIZATIONS  # the one rule: protos/model_spec.py
PACKED_MAX_ROWS = 16  # the measured crossover above: the packed kernel for at most this many rows
PACKED_IN_MULTIPLE = 16  # in_features the packed kernel handles correctly
QMAX = 127
CHUNK_ROWS = 4096  # rows quantized at once

_packed_by_device: dict[str, bool] = {}


def packed_kernel_available(device: torch.device) -> bool:
    """Whether aten._weight_int8pack_mm runs on this device type (probed once; some builds lack it)."""
    key = device.type
    if key not in _packed_by_device:
        try:
            x = torch.ones(1, PACKED_IN_MULTIPLE, dtype=torch.bfloat16, device=device)
            w = torch.ones(4, PACKED_IN_MULTIPLE, dtype=torch.int8, device=device)
            s = torch.ones(4, dtype=torch.bfloat16, device=device)
            out = torch.ops.aten._weight_int8pack_mm(x, w, s)
            _packed_by_device[key] = device.type == "meta" or bool((out == PACKED_IN_MULTIPLE).all())
        except (RuntimeError, NotImplementedError, AttributeError):
            _packed_by_device[key] = False
    return _packed_by_device[key]


def _frozen(tensor: torch.Tensor) -> nn.Parameter:
    """A parameter as is (so two modules can share one: a tied head and its embedding), or a new frozen one."""
    return tensor if isinstance(tensor, nn.Parameter) else nn.Parameter(tensor, requires_grad=False)


class Int8Linear(nn.Module):
    """y = x @ (qweight * scales[:, None]).T + bias; qweight int8 [out, in], scales bf16 [out]."""

    def __init__(self, qweight: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features = qweight.shape
        self.qweight = _frozen(qweight)
        self.scales = _frozen(scales)
        self.bias = _frozen(bias) if bias is not None else None

    @classmethod
    @torch.no_grad()
    def from_float(cls, weight: torch.Tensor, bias: torch.Tensor | None, transpose: bool = False) -> Int8Linear:
        """weight: [out, in] (or [in, out] with transpose=True); works on the meta device too."""
        rows = weight.t() if transpose else weight
        if rows.is_meta:
            qweight, scales = _quantize_rows(rows)
        else:  # in row chunks: float32 temporaries of a few MB, not three copies of a 49152-row head
            parts = [_quantize_rows(rows[i:i + CHUNK_ROWS]) for i in range(0, rows.shape[0], CHUNK_ROWS)]
            qweight, scales = torch.cat([q for q, _ in parts]), torch.cat([s for _, s in parts])
        return cls(qweight, scales, None if bias is None else bias.detach())

    @classmethod
    def from_conv1d(cls, conv: Conv1D) -> Int8Linear:
        """GPT-2's Conv1D holds its weight as [in, out]."""
        return cls.from_float(conv.weight, conv.bias, transpose=True)

    def uses_packed_kernel(self, rows: int, device: torch.device) -> bool:
        return (0 < rows <= PACKED_MAX_ROWS and self.in_features % PACKED_IN_MULTIPLE == 0
                and packed_kernel_available(device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [..., in] any float dtype -> [..., out] in x.dtype
        rows = x.reshape(-1, self.in_features).to(torch.bfloat16).contiguous()
        if self.uses_packed_kernel(rows.shape[0], x.device):
            out = torch.ops.aten._weight_int8pack_mm(rows, self.qweight, self.scales)
        else:
            out = F.linear(rows, self.qweight.to(torch.bfloat16)) * self.scales
        out = out.to(x.dtype)
        if self.bias is not None:
            out = out + self.bias.to(out.dtype)
        return out.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Int8Embedding(nn.Module):
    """An embedding table as int8 rows with one bf16 scale per row (the layout of Int8Linear, so a tied head shares
    it); a lookup dequantizes only the rows it reads, into ``dtype`` (the shard's activations)."""

    def __init__(self, qweight: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype) -> None:
        super().__init__()
        self.qweight, self.scales, self.dtype = _frozen(qweight), _frozen(scales), dtype

    @classmethod
    def from_embedding(cls, embedding: nn.Embedding) -> Int8Embedding:
        table = Int8Linear.from_float(embedding.weight, None)
        return cls(table.qweight, table.scales, embedding.weight.dtype)

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        rows = self.qweight.index_select(0, token_ids).float() * self.scales.index_select(0, token_ids).float()[:, None]
        return rows.to(self.dtype)


def _quantize_rows(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """int8 rows and their bf16 scales (absmax / 127; 1 for an all-zero row)."""
    w = rows.float()
    absmax = w.abs().amax(dim=1)
    scales = torch.where(absmax > 0, absmax / QMAX, torch.ones_like(absmax)).to(torch.bfloat16)
    # Quantize with the stored (bf16-rounded) scale so qweight * scales is the nearest grid point.
    qweight = (w / scales.float()[:, None]).round_().clamp_(-QMAX, QMAX).to(torch.int8).contiguous()
    return qweight, scales


def check_scheme(scheme: str) -> None:
    if scheme not in SCHEMES:
        raise ValueError(f"unknown quantization scheme {scheme!r}; allowed: {', '.join(SCHEMES)}")


@torch.no_grad()
def quantize_shard(model: ShardModel, scheme: str) -> None:
    """Replaces, in place and module by module, every linear of the layers and the LM head by Int8Linear
    (int4: Int4Linear where it fits).

    The embedding table becomes int8 rows (Int8Embedding) on the first shard; a tied head reads the same int8
    rows and scales (one copy), and a last shard that is not the first keeps only the head.
    """
    check_scheme(scheme)
    if scheme == "none":
        return
    quantize_linears(model.layers, scheme)
    if isinstance(model.lm_head, nn.Linear):
        model.lm_head = quantized_linear(model.lm_head, scheme)
    if isinstance(model.embed_tokens, nn.Embedding):
        table = Int8Embedding.from_embedding(model.embed_tokens)
        if model.lm_head is None and model.is_last:  # tied: the head reads the same int8 rows and scales
            model.lm_head = Int8Linear(table.qweight, table.scales, None)
        model.embed_tokens = table if model.is_first else None


def quantized_linear(child: nn.Linear | Conv1D, scheme: str) -> Int8Linear | Int4Linear:
    """The quantized module of one float linear: int4 where the scheme asks and the shape fits, else int8."""
    in_features, out_features = ((child.weight.shape[0], child.weight.shape[1]) if isinstance(child, Conv1D)
                                 else (child.in_features, child.out_features))
    module = Int4Linear if scheme == "int4" and fits_int4(in_features, out_features) else Int8Linear
    if isinstance(child, Conv1D):
        return module.from_float(child.weight, child.bias, transpose=True)
    return module.from_float(child.weight, child.bias)


@torch.no_grad()
def quantize_linears(module: nn.Module, scheme: str = "int8") -> None:
    """Every nn.Linear and Conv1D inside ``module`` becomes an Int8Linear (or Int4Linear), one at a time (each
    float module is freed before the next is quantized); quantized modules are left as they are."""
    check_scheme(scheme)
    parents = [m for m in module.modules() if not isinstance(m, (nn.Linear, Conv1D))]
    for parent in parents:
        names = [name for name, child in parent.named_children() if isinstance(child, (nn.Linear, Conv1D))]
        for name in names:
            child = getattr(parent, name)
            quantized = quantized_linear(child, scheme)
            del child
            setattr(parent, name, quantized)


def kernel_description(scheme: str, device: torch.device) -> str:
    """Which kernel runs for decode rows and for prefill rows on this device, for logs and Info."""
    check_scheme(scheme)
    if scheme == "none":
        return "float weights: dense matmul in the shard's dtype for all rows"
    if scheme == "int4":
        return int4_kernel_description(device)
    dense = "dense bf16 matmul on int8 weights cast to bf16, scaled per output channel"
    if not packed_kernel_available(device):
        return f"int8 weight-only: {dense} for all rows (aten._weight_int8pack_mm unavailable on {device.type})"
    return (f"int8 weight-only: aten._weight_int8pack_mm (bf16 activations) for <={PACKED_MAX_ROWS} rows "
            f"(in_features a multiple of {PACKED_IN_MULTIPLE}), {dense} above")
