"""The node's speed profile: one layer of the model's shape and format timed on random weights, for each decode
micro-batch size, a prefill chunk and the head (shapes of the figures only: speed is measured by make bench)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from shard_node.architectures import ModelSpec
from shard_node.profile import profile_layers, timed
from tests.unit.shard_node.test_speculative_verify import _tiny_llama

pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.mark.parametrize("quantization,dtype", [("none", torch.float32), ("int8", torch.bfloat16)])
def test_every_figure_is_measured_for_the_model_s_shape_and_format(tmp_path: Path, quantization: str,
                                                                    dtype: torch.dtype) -> None:
    spec: ModelSpec = _tiny_llama(tmp_path, 1000, seed=3)
    p = profile_layers(spec, dtype, torch.device("cpu"), quantization, rows=(1, 4), prefill_tokens=16, context=20,
                       min_seconds=0.001)
    assert set(p.decode_s) == set(p.head_s) == {1, 4}
    assert all(s > 0 for s in [*p.decode_s.values(), *p.head_s.values(), p.prefill_token_s])
    assert p.threads == torch.get_num_threads() and p.seconds > 0


def test_a_figure_is_the_mean_over_repetitions_lasting_the_minimum_time() -> None:
    calls: list[int] = []
    assert timed(lambda: calls.append(1), 0.0) >= 0 and len(calls) == 2  # one warm-up, then at least one
