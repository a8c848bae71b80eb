"""The one place that turns wire messages into Shardline's values and back: sampling parameters, layer ranges,
and the errors of a message that cannot be decoded. Torch-free, so every service can use it; tensor frames
(torch) are in protos/tensors.py, used by the shard nodes.
"""

from __future__ import annotations

from protos import common_pb2
from protos.data_structures import LayerRange, SamplingError, SamplingParams, TokenLogprobs


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
        presence_penalty=p.presence_penalty,
        frequency_penalty=p.frequency_penalty,
        logit_bias_token_ids=[token for token, _ in p.logit_bias],
        logit_bias_values=[bias for _, bias in p.logit_bias],
        has_logprobs=p.logprobs is not None,
        logprobs=p.logprobs or 0,
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
        presence_penalty=msg.presence_penalty,
        frequency_penalty=msg.frequency_penalty,
        logit_bias=_logit_bias_from_proto(msg),
        logprobs=msg.logprobs if msg.has_logprobs else None,
    )


def _logit_bias_from_proto(msg: common_pb2.SamplingParams) -> tuple[tuple[int, float], ...]:
    if len(msg.logit_bias_token_ids) != len(msg.logit_bias_values):
        raise SamplingError("logit_bias", f"logit_bias has {len(msg.logit_bias_token_ids)} token ids but "
                            f"{len(msg.logit_bias_values)} values")
    return tuple(zip(msg.logit_bias_token_ids, msg.logit_bias_values))


def layer_range_to_proto(r: LayerRange) -> common_pb2.LayerRange:
    return common_pb2.LayerRange(start=r.start, end=r.end)


def layer_range_from_proto(msg: common_pb2.LayerRange) -> LayerRange:
    return LayerRange(msg.start, msg.end)


def logprobs_to_proto(lp: TokenLogprobs) -> common_pb2.TokenLogprobs:
    return common_pb2.TokenLogprobs(logprobs=lp.logprobs, top=lp.top, top_token_ids=lp.top_token_ids,
                                    top_logprobs=lp.top_logprobs)


def logprobs_from_proto(msg: common_pb2.TokenLogprobs) -> TokenLogprobs | None:
    """None for a message without tokens (a sequence that asked for none); WireError unless there are ``top``
    entries per token."""
    if not msg.logprobs and not msg.top_token_ids and not msg.top_logprobs:
        return None
    lp = TokenLogprobs(tuple(msg.logprobs), msg.top, tuple(msg.top_token_ids), tuple(msg.top_logprobs))
    want = len(lp.logprobs) * lp.top
    if lp.top < 0 or len(lp.top_token_ids) != want or len(lp.top_logprobs) != want:
        raise WireError(f"token logprobs: {len(lp.logprobs)} tokens with {lp.top} alternatives each need {want} "
                        f"top ids and values, got {len(lp.top_token_ids)} and {len(lp.top_logprobs)}")
    return lp
