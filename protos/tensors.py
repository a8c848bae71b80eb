"""Tensor frames on the wire: raw little-endian bytes + dtype name + shape. Every decode checks the byte count
against the declared shape before a tensor is built (never pickle, never torch.load).

The only part of the wire format that needs torch: the shard nodes use it (and the tools that talk to them); the
API, the coordinator and the tokenizer service never import it (the coordinator relays hidden states as bytes).
"""

from __future__ import annotations

import math
import sys

import torch

from protos import common_pb2
from protos.wire import WireError

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int64": torch.int64,
    "int32": torch.int32,
    "int8": torch.int8,  # hidden states with per-row scales (protos/activations.py)
}
DTYPE_NAMES: dict[torch.dtype, str] = {v: k for k, v in DTYPES.items()}
MAX_DIMS = 8
MAX_DIM_SIZE = 2**31 - 1  # one dimension; anything a real shard exchanges is far smaller
MAX_SPAN_BYTES = 2**62  # product of the non-zero dimensions x itemsize: beyond it torch's strides overflow


def dtype_from_name(name: str) -> torch.dtype:
    try:
        return DTYPES[name]
    except KeyError:
        raise WireError(f"unknown dtype {name!r}; allowed: {', '.join(DTYPES)}") from None


def tensor_to_proto(t: torch.Tensor) -> common_pb2.Tensor:
    if t.dtype not in DTYPE_NAMES:
        raise WireError(f"cannot send dtype {t.dtype}; allowed: {', '.join(DTYPES)}")
    t = t.detach().to("cpu").contiguous()
    if sys.byteorder != "little":  # pragma: no cover - every supported host is little-endian
        raise WireError("big-endian hosts are not supported")
    raw = t.reshape(-1).view(torch.uint8) if t.numel() else torch.empty(0, dtype=torch.uint8)
    return common_pb2.Tensor(data=raw.numpy().tobytes(), shape=list(t.shape), dtype=DTYPE_NAMES[t.dtype])


def tensor_from_proto(msg: common_pb2.Tensor, expected_shape: tuple[int | None, ...] | None = None) -> torch.Tensor:
    """Validates dtype, shape and byte count, then builds the tensor (a copy, writable)."""
    dtype = dtype_from_name(msg.dtype)
    shape = tuple(int(d) for d in msg.shape)
    if len(shape) > MAX_DIMS:
        raise WireError(f"tensor has {len(shape)} dimensions; at most {MAX_DIMS} allowed")
    if any(d < 0 for d in shape):
        raise WireError(f"tensor shape {list(shape)} has a negative dimension")
    if any(d > MAX_DIM_SIZE for d in shape):
        raise WireError(f"tensor shape {list(shape)} has a dimension over {MAX_DIM_SIZE}")
    itemsize = torch.empty(0, dtype=dtype).element_size()
    if math.prod(max(d, 1) for d in shape) * itemsize > MAX_SPAN_BYTES:
        raise WireError(f"tensor shape {list(shape)} is too large to describe (over {MAX_SPAN_BYTES} bytes)")
    expected_bytes = math.prod(shape) * itemsize
    if expected_bytes != len(msg.data):
        raise WireError(
            f"tensor of shape {list(shape)} and dtype {msg.dtype} needs {expected_bytes} bytes, got {len(msg.data)}"
        )
    if expected_shape is not None:
        if len(expected_shape) != len(shape) or any(
            e is not None and e != s for e, s in zip(expected_shape, shape)
        ):
            want = ["*" if e is None else e for e in expected_shape]
            raise WireError(f"tensor shape {list(shape)} does not match the expected {want}")
    if math.prod(shape) == 0:
        return torch.empty(shape, dtype=dtype)
    return torch.frombuffer(bytearray(msg.data), dtype=dtype).reshape(shape)
