"""Hidden states on the wire between stages (protos/activations.py): each wire dtype round-trips within its
precision, int8 keeps one scale per row, a float16 frame never carries inf, and bad frames are refused."""

from __future__ import annotations

import pytest
import torch

from protos.activations import decode_hidden, encode_hidden
from protos.wire import WireError


def _hidden(rows: int = 5, width: int = 64) -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(rows, width) * torch.linspace(0.1, 30, width)  # rows with outliers, as real hidden states


@pytest.mark.parametrize(("wire", "itemsize", "tolerance"), [
    ("float32", 4, 0.0), ("bfloat16", 2, 2**-8), ("float16", 2, 2**-11), ("int8", 1, 1 / 254)])
def test_each_wire_dtype_round_trips_within_its_precision(wire: str, itemsize: int, tolerance: float) -> None:
    h = _hidden()
    frame = encode_hidden(h, wire)
    assert len(frame.data) == h.numel() * itemsize
    assert len(frame.row_scales) == (h.shape[0] * 4 if wire == "int8" else 0)
    back = decode_hidden(frame, tuple(h.shape), torch.float32)
    scale = h.abs().amax(dim=1, keepdim=True) if wire == "int8" else h.abs()
    assert bool(((back - h).abs() <= scale * tolerance + 1e-12).all())


def test_auto_sends_the_shards_own_dtype_and_the_receiver_gets_its_own() -> None:
    h = _hidden().to(torch.bfloat16)
    frame = encode_hidden(h, "")
    assert frame.dtype == "bfloat16"
    assert decode_hidden(frame, tuple(h.shape), torch.float32).dtype == torch.float32


def test_a_float16_frame_beyond_its_range_goes_as_float32_never_as_inf() -> None:
    h = _hidden()
    h[0, 0] = 1e6
    frame = encode_hidden(h, "float16")
    assert frame.dtype == "float32" and torch.equal(decode_hidden(frame, tuple(h.shape), torch.float32), h)


def test_an_all_zero_row_survives_int8() -> None:
    h = torch.zeros(2, 16)
    assert torch.equal(decode_hidden(encode_hidden(h, "int8"), (2, 16), torch.float32), h)


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda f: setattr(f, "row_scales", b""), "row_scales"),
    (lambda f: setattr(f, "row_scales", f.row_scales[:-4]), "row_scales"),
    (lambda f: setattr(f, "row_scales", torch.full((5,), float("nan")).numpy().tobytes()), "not finite"),
    (lambda f: setattr(f, "data", f.data[:-1]), "bytes"),
])
def test_bad_int8_frames_are_refused(mutate, message: str) -> None:  # noqa: ANN001 - a frame mutator
    frame = encode_hidden(_hidden(), "int8")
    mutate(frame)
    with pytest.raises(WireError, match=message):
        decode_hidden(frame, (5, 64), torch.float32)


def test_row_scales_on_a_float_frame_and_a_wrong_shape_are_refused() -> None:
    frame = encode_hidden(_hidden(), "float32")
    with pytest.raises(WireError, match="shape"):
        decode_hidden(frame, (4, 64), torch.float32)
    frame.row_scales = b"\0" * 20
    with pytest.raises(WireError, match="int8 frames only"):
        decode_hidden(frame, (5, 64), torch.float32)


def test_an_unknown_wire_dtype_is_refused() -> None:
    with pytest.raises(WireError, match="allowed"):
        encode_hidden(_hidden(), "int4")
