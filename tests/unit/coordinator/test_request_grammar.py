"""A request's structured output reaches the last stage once per KV cache: with its first slice that samples, and
again (with the output so far, to move past) on the new caches of a failover replay."""

from __future__ import annotations

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
