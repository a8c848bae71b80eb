"""Ring decode over fake nodes: while one lane decodes alone, its next step is sent ahead and takes its tokens
from the last stage; the tokens are those of plain decoding, also when a request joins, one is cancelled, or a
node is lost mid-ring."""

from __future__ import annotations

import asyncio

from coordinator.request import Request
from protos.data_structures import SamplingParams
from tests.unit.coordinator.builders import events_of, expected_tokens, generate, make_engine, node, request, tokens_of


def test_a_lone_stream_decodes_in_a_ring_and_gets_the_same_tokens() -> None:
    engine, clients = make_engine([["n1"], ["n2"], ["n3"]], depth=3)
    [tokens] = asyncio.run(generate(engine, [request("a", [5, 6, 7], 8)]))
    assert tokens == expected_tokens([5, 6, 7], 8)
    first = node(clients, "n1").forwarded
    assert sum(f.tokens_from_peer for f in first) >= 5  # the decode steps took their tokens from the last stage
    assert len(first) == 8  # the prefill and one step per later token: none sent past max_tokens


def test_without_ring_decode_every_step_brings_its_tokens() -> None:
    engine, clients = make_engine([["n1"], ["n2"], ["n3"]], depth=3)
    engine.ring_decode = False
    [tokens] = asyncio.run(generate(engine, [request("a", [5, 6, 7], 8)]))
    assert tokens == expected_tokens([5, 6, 7], 8)
    assert not any(f.tokens_from_peer for f in node(clients, "n1").forwarded)


def test_a_stream_with_penalties_is_never_decoded_in_a_ring() -> None:
    """Its penalties count every token so far, and the token in flight would reach only the first stage: each step
    goes through the coordinator, which sends the whole history with it."""
    engine, clients = make_engine([["n1"], ["n2"], ["n3"]], depth=3)
    req = request("a", [5, 6, 7], 8)
    req.sampling = SamplingParams(frequency_penalty=0.5)
    [tokens] = asyncio.run(generate(engine, [req]))
    assert tokens == expected_tokens([5, 6, 7], 8)  # (the fake model ignores penalties)
    last = node(clients, "n3").forwarded
    assert not any(f.tokens_from_peer for f in node(clients, "n1").forwarded)
    histories = [list(s.recent_token_ids) for f in last for s in f.seqs if not s.no_sample]
    assert histories[-1] == [5, 6, 7, *tokens[:-1]]  # the last step saw every token before its own
    assert all(s.prompt_tokens == 3 for f in last for s in f.seqs)


def test_a_request_that_joins_a_ring_ends_it_and_both_get_their_tokens() -> None:
    async def scenario() -> tuple[list[int], list[int]]:
        engine, _ = make_engine([["n1"], ["n2"], ["n3"]], depth=3)
        first, second = request("a", [5, 6, 7], 12), request("b", [9, 8], 6)
        engine.start()
        engine.submit(first)
        while len(first.output_ids) < 3:  # it decodes alone for a while
            await asyncio.sleep(0)
        engine.submit(second)
        a, b = await asyncio.gather(events_of(first), events_of(second))
        await engine.stop()
        return tokens_of(a), tokens_of(b)

    a, b = asyncio.run(scenario())
    assert a == expected_tokens([5, 6, 7], 12) and b == expected_tokens([9, 8], 6)


def test_a_request_cancelled_in_a_ring_stops_and_the_other_goes_on() -> None:
    async def scenario() -> tuple[Request, list[int]]:
        engine, _ = make_engine([["n1"], ["n2"], ["n3"]], depth=1)
        gone, kept = request("a", [5, 6, 7], 30), request("b", [9, 8], 10)
        engine.start()
        engine.submit(gone)
        engine.submit(kept)
        while len(gone.output_ids) < 3:
            await asyncio.sleep(0)
        engine.cancel(gone)
        b = await events_of(kept)
        await events_of(gone)
        await engine.stop()
        return gone, tokens_of(b)

    gone, b = asyncio.run(scenario())
    assert gone.finish_reason == "cancelled" and len(gone.output_ids) < 30
    assert b == expected_tokens([9, 8], 10)


def test_a_node_lost_mid_ring_fails_over_to_the_same_tokens() -> None:
    engine, clients = make_engine([["n1"], ["n2", "n4"], ["n3"]], depth=1)
    node(clients, "n2").lose_stream_at = 5  # a few ring steps in
    r = request("a", [5, 6, 7], 10)
    [tokens] = asyncio.run(generate(engine, [r]))
    assert tokens == expected_tokens([5, 6, 7], 10) and r.failovers == 1
