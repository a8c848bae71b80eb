"""Hidden states on the wire between stages, in the model's ``wire_dtype`` (protos/model_spec.py).

``float32``, ``bfloat16`` and ``float16`` are casts; ``int8`` keeps one float32 scale per row (absmax / 127), so a
row of 576 values costs 580 bytes instead of 2304. A receiver gets the rows back in its own dtype. Like every tensor
frame, a frame is checked against its declared shape and byte counts before it is used (protos/tensors.py).
"""

from __future__ import annotations

import torch

from protos import common_pb2
from protos.model_spec import ALLOWED_WIRE_DTYPES
from protos.tensors import tensor_from_proto, tensor_to_proto
from protos.wire import WireError

INT8_MAX = 127
DTYPE_OF: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def encode_hidden(hidden: torch.Tensor, wire_dtype: str) -> common_pb2.Tensor:
    """hidden: [rows, D] in any float dtype -> a frame in ``wire_dtype`` ('' = as it is)."""
    if not wire_dtype or DTYPE_OF.get(wire_dtype) == hidden.dtype:
        return tensor_to_proto(hidden)
    if wire_dtype == "int8":
        rows = hidden.float()
        scales = rows.abs().amax(dim=1).clamp_min(torch.finfo(torch.float32).tiny) / INT8_MAX
        levels = torch.round(rows / scales[:, None]).clamp_(-INT8_MAX, INT8_MAX).to(torch.int8)
        frame = common_pb2.Tensor(data=levels.contiguous().view(torch.uint8).numpy().tobytes(),
                                  shape=list(levels.shape), dtype="int8")
        frame.row_scales = scales.contiguous().numpy().tobytes()
        return frame
    if wire_dtype not in DTYPE_OF:
        raise WireError(f"unknown wire dtype {wire_dtype!r}; allowed: {', '.join(ALLOWED_WIRE_DTYPES)}")
    cast = hidden.to(DTYPE_OF[wire_dtype])
    if cast.dtype == torch.float16 and not bool(torch.isfinite(cast).all()):
        return tensor_to_proto(hidden)  # beyond float16's range (65504): this frame goes as it is, never as inf
    return tensor_to_proto(cast)


def decode_hidden(frame: common_pb2.Tensor, shape: tuple[int, int], dtype: torch.dtype) -> torch.Tensor:
    """A frame of ``shape`` (checked) in any wire dtype -> a tensor in ``dtype``."""
    if frame.dtype != "int8":
        if frame.row_scales:
            raise WireError(f"row_scales belong to int8 frames only, got a {frame.dtype} frame with them")
        return tensor_from_proto(frame, shape).to(dtype)
    levels_frame = common_pb2.Tensor(data=frame.data, shape=frame.shape, dtype="int8")
    levels = tensor_from_proto(levels_frame, shape)
    if len(frame.row_scales) != levels.shape[0] * 4:
        raise WireError(f"an int8 frame of {levels.shape[0]} rows needs {levels.shape[0] * 4} bytes of float32 "
                        f"row_scales, got {len(frame.row_scales)}")
    scales = torch.frombuffer(bytearray(frame.row_scales), dtype=torch.float32) if levels.shape[0] else \
        torch.empty(0)
    if not bool(torch.isfinite(scales).all()):
        raise WireError("an int8 frame has a row scale that is not finite")
    return (levels.float() * scales[:, None]).to(dtype)

