"""The last stage's logit processing beyond temperature and top-k/p: OpenAI's presence and frequency penalties
(on the output only), logit bias, and the log-probabilities it reports (the model's own, before any of them)."""

from __future__ import annotations

import pytest
import torch

from protos.data_structures import SamplingError, SamplingParams
from shard_node.sampler import TokenHistory, chosen_logprobs, penalized, sample_next
from shard_node.speculative import verify_drafts

GREEDY = SamplingParams()


def test_presence_and_frequency_penalties_count_the_output_only() -> None:
    logits = torch.zeros(6)
    history = TokenHistory([1, 1, 2, 3, 3, 3], prompt_tokens=3)  # prompt 1 1 2, output 3 3 3
    out = penalized(logits, SamplingParams(presence_penalty=0.5, frequency_penalty=0.25), history)
    assert out.tolist() == [0.0, 0.0, 0.0, -(0.5 + 3 * 0.25), 0.0, 0.0]
    negative = penalized(logits, SamplingParams(presence_penalty=-1.0), history)
    assert negative[3] == 1.0  # a negative penalty encourages repeats


def test_logit_bias_is_added_and_can_force_or_ban_a_token() -> None:
    logits = torch.tensor([3.0, 1.0, 2.0])
    assert penalized(logits, SamplingParams(logit_bias=((1, 2.5),)), None).tolist() == [3.0, 3.5, 2.0]
    assert sample_next(logits, SamplingParams(logit_bias=((2, 100.0),)), None) == 2
    assert sample_next(logits, SamplingParams(temperature=1.0, logit_bias=((0, -100.0), (2, -100.0)), seed=1),
                       torch.Generator().manual_seed(1)) == 1


def test_nothing_to_change_returns_the_logits_themselves() -> None:
    logits = torch.randn(8)
    assert penalized(logits, SamplingParams(temperature=1.0, top_k=3), TokenHistory([1, 2], 1)) is logits


def test_drafts_count_as_output_for_the_penalties_of_the_rows_after_them() -> None:
    row = torch.tensor([0.0, 0.0, 0.0, 1.0, 0.6])  # 3 is best by 0.4
    logits = row.repeat(3, 1)
    params = SamplingParams(frequency_penalty=0.5)
    assert verify_drafts(logits, [3, 3], params, None, TokenHistory([9], 1)) == (1, 4)  # the second 3 is penalised
    assert verify_drafts(logits, [3, 4], params, None, TokenHistory([9], 1)) == (2, 3)
    assert verify_drafts(logits, [3], params, None, TokenHistory([3], 1)) == (1, 4)  # the prompt's 3 does not count


def test_chosen_logprobs_are_the_log_softmax_of_the_raw_logits_with_the_most_likely() -> None:
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0], [0.0, 0.0, 5.0, 1.0]])
    lp = chosen_logprobs(logits, [1, 2], top=2)
    reference = torch.log_softmax(logits, dim=-1)
    assert lp.logprobs == pytest.approx([float(reference[0, 1]), float(reference[1, 2])])
    assert lp.top == 2 and lp.top_token_ids == (0, 1, 2, 3)
    assert lp.top_logprobs == pytest.approx([float(reference[0, 0]), float(reference[0, 1]),
                                             float(reference[1, 2]), float(reference[1, 3])])
    assert lp.first(1).logprobs == lp.logprobs[:1] and lp.first(1).top_token_ids == (0, 1)
    assert chosen_logprobs(logits, [0, 0], top=0).top_token_ids == ()


@pytest.mark.parametrize("field,value", [
    ("presence_penalty", 2.5), ("frequency_penalty", -2.01), ("presence_penalty", float("nan")),
    ("logit_bias", ((5, 101.0),)), ("logit_bias", ((5, 1.0), (3, 1.0))), ("logit_bias", ((-1, 1.0),)),
    ("logit_bias", tuple((i, 1.0) for i in range(1025))), ("logprobs", 21), ("logprobs", -1),
])
def test_out_of_range_values_are_refused_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(SamplingError) as e:
        SamplingParams(**{field: value})
    assert e.value.field.startswith(field)
