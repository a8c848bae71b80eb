"""protos/wire.py and protos/tensors.py: tensors and sampling params to protobuf and back, with strict decoding."""

from __future__ import annotations

import struct
import time

import pytest
import torch

from protos import common_pb2, wire
from protos.data_structures import LayerRange, SamplingParams, TokenLogprobs
from protos.tensors import MAX_DIMS, dtype_from_name, tensor_from_proto, tensor_to_proto
from protos.wire import (
    WireError,
    layer_range_from_proto,
    layer_range_to_proto,
    sampling_from_proto,
    sampling_to_proto,
)

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32]


def _sample(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    if dtype.is_floating_point:
        return torch.randn(shape, generator=g).to(dtype)
    return torch.randint(-(2**30), 2**30, shape, generator=g, dtype=dtype)


def _roundtrip(t: torch.Tensor) -> torch.Tensor:
    msg = tensor_to_proto(t)
    # go through real serialization too
    again = common_pb2.Tensor.FromString(msg.SerializeToString())
    return tensor_from_proto(again)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(7,), (3, 5), (2, 3, 4), (0,), (0, 16), (4, 0), (1,), (1, 1)], ids=str)
def test_roundtrip(dtype: torch.dtype, shape: tuple[int, ...]) -> None:
    t = _sample(shape, dtype)
    out = _roundtrip(t)
    assert out.dtype == dtype
    assert tuple(out.shape) == shape
    assert torch.equal(out, t)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_roundtrip_non_contiguous(dtype: torch.dtype) -> None:
    t = _sample((4, 6), dtype).T
    assert not t.is_contiguous()
    out = _roundtrip(t)
    assert tuple(out.shape) == (6, 4)
    assert torch.equal(out, t)
    sliced = _sample((8, 8), dtype)[::2, 1::3]
    assert torch.equal(_roundtrip(sliced), sliced)


# 0-d tensors (shape []) hold one element and must keep their value.


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_roundtrip_zero_dim(dtype: torch.dtype) -> None:
    t = _sample((), dtype)
    out = _roundtrip(t)
    assert out.dtype == dtype and out.shape == ()
    assert torch.equal(out, t)


def test_zero_dim_decode_keeps_value() -> None:
    msg = common_pb2.Tensor(data=struct.pack("<q", 123456789), shape=[], dtype="int64")
    assert tensor_from_proto(msg).item() == 123456789


def test_zero_dim_byte_count_checked() -> None:
    # a 0-d tensor holds one element: 4 bytes for float32
    with pytest.raises(WireError, match="needs 4 bytes"):
        tensor_from_proto(common_pb2.Tensor(data=b"", shape=[], dtype="float32"))


def test_decoded_tensor_is_writable_copy() -> None:
    t = torch.arange(6, dtype=torch.float32)
    msg = tensor_to_proto(t)
    out = tensor_from_proto(msg)
    out[0] = 100.0  # must not raise (frombuffer on bytes would be read-only)
    assert tensor_from_proto(msg)[0] == 0.0


def test_little_endian_bytes() -> None:
    msg = tensor_to_proto(torch.tensor([1], dtype=torch.int32))
    assert msg.data == b"\x01\x00\x00\x00"
    assert msg.dtype == "int32"


def test_unsupported_dtype_to_proto() -> None:
    with pytest.raises(WireError, match="cannot send dtype"):
        tensor_to_proto(torch.zeros(2, dtype=torch.float64))


def test_unknown_dtype_name() -> None:
    with pytest.raises(WireError, match="unknown dtype 'float64'"):
        tensor_from_proto(common_pb2.Tensor(data=b"\x00" * 8, shape=[1], dtype="float64"))
    with pytest.raises(WireError, match="allowed"):
        dtype_from_name("")


@pytest.mark.parametrize(("shape", "nbytes"), [([2, 3], 23), ([2, 3], 25), ([4], 0), ([], 0), ([0], 4)])
def test_byte_count_mismatch(shape: list[int], nbytes: int) -> None:
    with pytest.raises(WireError, match="needs .* bytes"):
        tensor_from_proto(common_pb2.Tensor(data=b"\x00" * nbytes, shape=shape, dtype="float32"))


def test_negative_dim() -> None:
    with pytest.raises(WireError, match="negative"):
        tensor_from_proto(common_pb2.Tensor(data=b"", shape=[-1, 0], dtype="float32"))
    with pytest.raises(WireError, match="negative"):
        tensor_from_proto(common_pb2.Tensor(data=b"\x00" * 16, shape=[-2, -2], dtype="float32"))


def test_too_many_dims() -> None:
    shape = [1] * (MAX_DIMS + 1)
    with pytest.raises(WireError, match="dimensions"):
        tensor_from_proto(common_pb2.Tensor(data=b"\x00" * 4, shape=shape, dtype="float32"))
    ok = tensor_from_proto(common_pb2.Tensor(data=b"\x00" * 4, shape=[1] * MAX_DIMS, dtype="float32"))
    assert ok.dim() == MAX_DIMS


def test_expected_shape() -> None:
    msg = tensor_to_proto(torch.zeros(3, 4))
    assert tuple(tensor_from_proto(msg, expected_shape=(3, 4)).shape) == (3, 4)
    assert tuple(tensor_from_proto(msg, expected_shape=(None, 4)).shape) == (3, 4)
    with pytest.raises(WireError, match=r"does not match the expected \['\*', 5\]"):
        tensor_from_proto(msg, expected_shape=(None, 5))
    with pytest.raises(WireError, match="does not match"):
        tensor_from_proto(msg, expected_shape=(3, 4, 1))
    with pytest.raises(WireError, match="does not match"):
        tensor_from_proto(msg, expected_shape=(12,))


def test_huge_declared_shape_rejected_quickly() -> None:
    started = time.perf_counter()
    for shape in ([2**31, 2**31], [10**6] * 6, [2**62, 2]):
        with pytest.raises(WireError):
            tensor_from_proto(common_pb2.Tensor(data=b"\x00" * 8, shape=shape, dtype="float32"))
    assert time.perf_counter() - started < 1.0


# ------------------------------------------------------------------ sampling params


def _sp_roundtrip(p: SamplingParams) -> SamplingParams:
    msg = sampling_to_proto(p)
    return sampling_from_proto(common_pb2.SamplingParams.FromString(msg.SerializeToString()))


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(),
        SamplingParams(temperature=0.7, top_p=0.9, top_k=40, seed=1234, repetition_penalty=1.1),
        SamplingParams(temperature=1.0, seed=0),  # seed 0 is a real seed, not "unset"
        SamplingParams(temperature=0.5, seed=None),
        SamplingParams(temperature=1.5, top_p=0.25, top_k=0, seed=2**40),
    ],
)
def test_sampling_roundtrip(params: SamplingParams) -> None:
    out = _sp_roundtrip(params)
    assert out.seed == params.seed
    assert out.top_k == params.top_k
    assert out.temperature == pytest.approx(params.temperature, rel=1e-6)
    assert out.top_p == pytest.approx(params.top_p, rel=1e-6)
    assert out.repetition_penalty == pytest.approx(params.repetition_penalty, rel=1e-6)


def test_sampling_seed_flag() -> None:
    assert sampling_to_proto(SamplingParams(seed=None)).has_seed is False
    msg = sampling_to_proto(SamplingParams(seed=0))
    assert msg.has_seed is True and msg.seed == 0


def test_sampling_zero_defaults_normalised() -> None:
    out = sampling_from_proto(common_pb2.SamplingParams())  # every field unset / 0
    assert out.top_p == 1.0
    assert out.repetition_penalty == 1.0
    assert out.seed is None
    assert out.is_greedy
    out = sampling_from_proto(common_pb2.SamplingParams(temperature=0.8, top_p=0.0, seed=7))
    assert out.top_p == 1.0 and out.seed is None  # seed without has_seed is ignored


def test_layer_range_roundtrip() -> None:
    r = LayerRange(3, 17)
    assert layer_range_from_proto(layer_range_to_proto(r)) == r


def test_penalties_bias_and_logprobs_survive_the_wire() -> None:
    params = SamplingParams(temperature=0.5, presence_penalty=-0.5, frequency_penalty=1.5,
                            logit_bias=((3, -100.0), (7, 2.5)), logprobs=0)
    assert wire.sampling_from_proto(wire.sampling_to_proto(params)) == params
    assert wire.sampling_from_proto(wire.sampling_to_proto(SamplingParams())).logprobs is None
    lp = TokenLogprobs((-0.5, -1.0), 2, (1, 2, 3, 4), (-0.5, -1.5, -1.0, -2.0))
    assert wire.logprobs_from_proto(wire.logprobs_to_proto(lp)) == lp
    broken = wire.logprobs_to_proto(lp)
    del broken.top_logprobs[-1]
    with pytest.raises(wire.WireError, match="top ids"):
        wire.logprobs_from_proto(broken)
    uneven = wire.sampling_to_proto(params)
    del uneven.logit_bias_values[-1]
    with pytest.raises(ValueError, match="logit_bias"):
        wire.sampling_from_proto(uneven)
