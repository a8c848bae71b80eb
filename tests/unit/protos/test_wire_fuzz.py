"""Property-based fuzzing of the tensor wire format (protos/wire.py): any frame either decodes to exactly the
tensor it declares or is refused with WireError (a message); never another exception, and never a tensor larger
than the bytes that came with the frame."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from protos import common_pb2, tensors, wire

INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
DIMS = st.one_of(st.integers(min_value=0, max_value=64), st.integers(min_value=-4, max_value=-1),
                 st.sampled_from([2**31, 2**32 + 1, 2**62, 2**63 - 1]), INT64)
DTYPE_NAMES = st.one_of(st.sampled_from([*tensors.DTYPES, "", "float64", "uint8", "FLOAT32", "float32 ", "bool"]),
                        st.text(max_size=12))
SETTINGS = settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def frames() -> st.SearchStrategy[common_pb2.Tensor]:
    return st.builds(lambda data, shape, dtype: common_pb2.Tensor(data=data, shape=shape, dtype=dtype),
                     st.binary(max_size=512), st.lists(DIMS, max_size=10), DTYPE_NAMES)


@st.composite
def consistent_frames(draw: st.DrawFn) -> common_pb2.Tensor:
    """Frames whose byte count matches (so decoding gets past the size check), with zero-size huge shapes too."""
    dtype = draw(st.sampled_from(list(tensors.DTYPES)))
    itemsize = torch.empty(0, dtype=tensors.DTYPES[dtype]).element_size()
    shape = draw(st.lists(st.integers(min_value=0, max_value=6), min_size=0, max_size=4))
    if draw(st.booleans()) and shape:
        shape[draw(st.integers(0, len(shape) - 1))] = 0
        shape.append(draw(st.sampled_from([2**20, 2**31 - 1])))  # zero elements: a large dim allocates nothing
    data = draw(st.binary(min_size=math.prod(shape) * itemsize, max_size=math.prod(shape) * itemsize))
    return common_pb2.Tensor(data=data, shape=shape, dtype=dtype)


def _check(frame: common_pb2.Tensor) -> None:
    try:
        t = tensors.tensor_from_proto(frame)
    except wire.WireError as e:
        assert str(e), "a refusal must say why"
        return
    assert list(t.shape) == list(frame.shape)
    assert t.dtype == tensors.DTYPES[frame.dtype]
    assert t.numel() * t.element_size() == len(frame.data), "decoded more than the frame carried"


@SETTINGS
@given(frames())
@example(common_pb2.Tensor(data=b"\0" * 8, shape=[2**62, 2**62], dtype="float32"))  # product overflows int64
@example(common_pb2.Tensor(data=b"\0" * 8, shape=[-2, -1], dtype="float32"))  # negatives that multiply to 2
@example(common_pb2.Tensor(data=b"", shape=[0, 2, 2**62], dtype="float32"))  # zero elements, strides overflow
@example(common_pb2.Tensor(data=b"", shape=[0, 2**30, 2**30, 2**30], dtype="float32"))  # each dim fine, span not
@example(common_pb2.Tensor(data=b"", shape=[1] * 9, dtype="float32"))  # too many dimensions
@example(common_pb2.Tensor(data=b"\0" * 3, shape=[1], dtype="float32"))  # byte count does not match
def test_any_frame_decodes_exactly_or_is_refused(frame: common_pb2.Tensor) -> None:
    _check(frame)


@SETTINGS
@given(consistent_frames())
def test_frames_with_matching_bytes_round_trip(frame: common_pb2.Tensor) -> None:
    t = tensors.tensor_from_proto(frame)
    assert tensors.tensor_to_proto(t).data == frame.data
    assert list(t.shape) == list(frame.shape)


@SETTINGS
@given(frames(), st.lists(st.one_of(st.none(), st.integers(0, 8)), max_size=4))
def test_expected_shape_is_enforced(frame: common_pb2.Tensor, expected: list[int | None]) -> None:
    try:
        t = tensors.tensor_from_proto(frame, tuple(expected))
    except wire.WireError:
        return
    assert len(t.shape) == len(expected)
    assert all(e is None or e == s for e, s in zip(expected, t.shape))


@pytest.mark.parametrize("name", ["float64", "", "torch.float32", "uint8"])
def test_unknown_dtype_names_list_what_is_allowed(name: str) -> None:
    with pytest.raises(wire.WireError, match="allowed: float32, float16, bfloat16"):
        tensors.tensor_from_proto(common_pb2.Tensor(data=b"", shape=[0], dtype=name))
