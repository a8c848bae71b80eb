"""What a request exchanges with the last stage only once: its structured output's grammar once per KV cache (with
its first slice that samples, and again, with the output so far to move past, on the new caches of a failover
replay), and its prompt's log-probabilities once every prefill chunk's are in."""

from __future__ import annotations

from protos.data_structures import TokenLogprobs
from tests.unit.coordinator.builders import request


def test_the_grammar_goes_with_the_first_sampling_slice_of_each_cache() -> None:
    req = request("a", [1, 2, 3], 8)
    req.grammar = '{"grammars": []}'
    assert req.grammar_to_send(samples=False) == ("", [])  # a prefill chunk that samples nothing
    assert req.grammar_to_send(samples=True) == (req.grammar, [])
    assert req.grammar_to_send(samples=True) == ("", [])  # that cache has it now
    req.output_ids += [7, 8]
    req.restart_on_new_route("a-1")
    assert req.grammar_to_send(samples=True) == (req.grammar, [7, 8])


def test_without_a_grammar_nothing_is_sent() -> None:
    assert request("b").grammar_to_send(samples=True) == ("", [])


def test_prompt_scores_go_once_when_every_chunk_is_in_and_only_when_asked() -> None:
    req = request("c", [1, 2, 3, 4], 8)
    assert req.prompt_to_score(0, 2) == [] and req.take_prompt_scores() is None  # not asked
    req.prompt_logprobs = True
    assert req.prompt_to_score(0, 2) == [2, 3] and req.prompt_to_score(2, 2) == [4]
    assert req.prompt_scores is not None
    req.prompt_scores[2] = TokenLogprobs((-3.0,))
    assert req.take_prompt_scores() is None  # the first chunk's are not in yet
    req.prompt_scores[0] = TokenLogprobs((-1.0, -2.0))
    assert req.take_prompt_scores() == TokenLogprobs((-1.0, -2.0, -3.0))
    assert req.take_prompt_scores() is None and req.prompt_to_score(0, 4) == []  # delivered: never again
    one = request("d", [5], 4)
    one.prompt_logprobs = True
    assert one.take_prompt_scores() == TokenLogprobs()  # a one-token prompt has nothing to score
