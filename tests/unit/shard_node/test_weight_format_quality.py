"""Measured accuracy of the weight formats on the real SmolLM2: perplexity on the fixed text the bench uses
(bench/data/perplexity.txt), each format against float32 on the same machine.

Bound: at most 3% above float32's perplexity. Weight-only int8 with one scale per output channel and bfloat16
weights both round each weight by under 0.4% of its row's largest magnitude; published figures for such formats
on small Llamas move perplexity by well under 1%, and the measured figures are printed by `python -m bench.formats`
(and in the note of the change). 3% leaves room for a CPU whose kernels round differently, while a broken scale,
a transposed weight or a lost bias moves perplexity by orders of magnitude."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.formats import load_runner, perplexity, text_ids

MAX_RELATIVE_INCREASE = 0.03


@pytest.fixture(scope="module")
def float32_perplexity(smollm2_dir: Path) -> float:
    return perplexity(load_runner(smollm2_dir), text_ids(smollm2_dir))


@pytest.mark.parametrize(("dtype", "quantization"), [("float32", "int8"), ("bfloat16", "int8"), ("bfloat16", "none")])
def test_perplexity_stays_within_bound_of_float32(smollm2_dir: Path, float32_perplexity: float, dtype: str,
                                                   quantization: str) -> None:
    got = perplexity(load_runner(smollm2_dir, dtype, quantization), text_ids(smollm2_dir))
    assert 1.0 < float32_perplexity < 100.0, float32_perplexity  # the model reads the text as English
    assert got <= float32_perplexity * (1 + MAX_RELATIVE_INCREASE), (got, float32_perplexity)
