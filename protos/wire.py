"""The one place that turns wire messages into Shardline's values and back: sampling parameters, layer ranges,
and the errors of a message that cannot be decoded. Torch-free, so every service can use it; tensor frames
(torch) are in protos/tensors.py, used by the shard nodes.
"""

from __future__ import annotations

from protos import common_pb2
from protos.data_structures import LayerRange, SamplingParams


class WireError(ValueError):
    """A message that cannot be decoded: the text says what was wrong and what is allowed."""


def sampling_to_proto(p: SamplingParams) -> common_pb2.SamplingParams:
    return common_pb2.SamplingParams(
        temperature=p.temperature,
        top_p=p.top_p,
        top_k=p.top_k,
        has_seed=p.seed is not None,
        seed=p.seed or 0,
        repetition_penalty=p.repetition_penalty,
    )


def sampling_from_proto(msg: common_pb2.SamplingParams) -> SamplingParams:
    """0 (unset in proto3) means the default for top_p and repetition_penalty; anything else is checked by
    SamplingParams, so NaN, inf and out-of-range values raise SamplingError (INVALID_ARGUMENT for a caller)."""
    return SamplingParams(
        temperature=msg.temperature,
        top_p=1.0 if msg.top_p == 0 else msg.top_p,
        top_k=msg.top_k,
        seed=msg.seed if msg.has_seed else None,
        repetition_penalty=1.0 if msg.repetition_penalty == 0 else msg.repetition_penalty,
    )


def layer_range_to_proto(r: LayerRange) -> common_pb2.LayerRange:
    return common_pb2.LayerRange(start=r.start, end=r.end)


def layer_range_from_proto(msg: common_pb2.LayerRange) -> LayerRange:
    return LayerRange(msg.start, msg.end)
