"""Speculative decoding over fake nodes: drafts from the sequence itself, verified by the last stage in one pass.

The fake model (tests/unit/fakes.py) copies itself with COPY_PERIOD set, so n-gram drafts are right for a while
and then wrong: every step accepts some drafts, rejects others, and rolls the caches back. The tokens must be
exactly those of plain decoding in every case."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from prometheus_client import REGISTRY

from coordinator.batch import BatchEntry, take_tokens
from coordinator.request import TokenEvent
from coordinator.speculation import DraftState, NgramIndex
from tests.unit import fakes
from tests.unit.coordinator.builders import events_of, expected_tokens, generate, make_engine, node, request, tokens_of

PROMPT = [11, 12, 13, 14, 15, 16, 17]


@pytest.fixture
def copying() -> Iterator[None]:
    fakes.COPY_PERIOD[:] = [5]
    yield
    fakes.COPY_PERIOD.clear()


# ----- the drafter --------------------------------------------------------------------------------------------


def test_the_index_proposes_what_followed_the_latest_occurrence_of_the_longest_suffix() -> None:
    index = NgramIndex(min_n=2, max_n=3)
    tokens = [1, 2, 3, 4, 9, 2, 3, 5, 6, 1, 2, 3]
    assert index.lookup(tokens, [], 3) == [4, 9, 2]  # "1 2 3" wins over the later "2 3" (before 5)
    index = NgramIndex(min_n=2, max_n=3)
    tokens = [1, 2, 3, 4, 9, 2, 3, 5, 6, 7, 2, 3]
    assert index.lookup(tokens[:5], tokens[5:], 3) == [5, 6, 7]  # only "2 3" is found: its latest occurrence
    assert index.lookup(tokens[:5], tokens[5:-1] + [8], 3) == []  # "2 8" never appeared


def test_the_index_grows_with_the_tokens_and_proposes_at_most_the_limit() -> None:
    index = NgramIndex(min_n=2, max_n=2)
    prompt, output = [5, 6, 7], [8]
    assert index.lookup(prompt, output, 4) == []
    output += [5, 6]
    assert index.lookup(prompt, output, 4) == [7, 8, 5, 6] and index.lookup(prompt, output, 1) == [7]


def test_after_an_edit_the_index_goes_on_copying_from_where_the_sequence_copied() -> None:
    prompt = [1, 2, 3, 6, 7, 8, 20, 6, 7, 9]  # "6 7" twice: before 8, and (latest) before 9
    index = NgramIndex(min_n=2, max_n=3)
    assert index.lookup(prompt, [1, 2], 3) == [3, 6, 7]  # copying from the start
    assert index.lookup(prompt, [1, 2, 33], 3) == []  # 3 was edited into 33: nothing ends with it
    assert index.lookup(prompt, [1, 2, 33, 6], 3) == [7, 8, 20]  # the lone 6 next to where the copy had got to
    assert index.lookup(prompt, [1, 2, 33, 6, 7], 3) == [8, 20, 6]  # "6 7" there, not its latest occurrence
    assert NgramIndex(min_n=2, max_n=3).lookup(prompt, [1, 2, 33, 6, 7], 3) == [9, 1, 2]  # copying from nowhere
    assert NgramIndex(min_n=2, max_n=3).lookup(prompt, [1, 2, 33, 6], 3) == []  # a lone token: only near a copy


@pytest.mark.parametrize("cut", range(0, 13))
def test_the_index_reads_prompt_and_output_as_one_sequence_wherever_they_meet(cut: int) -> None:
    tokens = [4, 1, 2, 3, 4, 1, 2, 9, 4, 1, 2, 3]
    grown, whole = NgramIndex(), NgramIndex()
    for end in range(cut, len(tokens) + 1):  # the output grows token by token
        assert grown.lookup(tokens[:cut], tokens[cut:end], 5) == whole.lookup(tokens[:end], [], 5)
    assert whole.lookup(tokens, [], 5) == [4, 1, 2, 9, 4]  # the 4-gram "4 1 2 3" opened the sequence


def test_draft_length_grows_on_hits_shrinks_on_misses_and_backs_off_after_none_accepted() -> None:
    state = DraftState(max_draft_tokens=8)
    assert state.draft_tokens == 4
    state.record(4, 4, num_output=10)
    assert state.draft_tokens == 6
    state.record(6, 6, num_output=20)
    state.record(8, 8, num_output=30)
    assert state.draft_tokens == 8  # capped
    state.record(8, 3, num_output=34)
    assert state.draft_tokens == 7 and state.resume_at == 0
    state.record(7, 0, num_output=35)
    assert state.resume_at == 0  # one miss: drafts again at once
    state.record(6, 0, num_output=37)
    assert state.resume_at == 38  # two in a row: one plain token first
    repeating = [1, 2, 3] * 13
    assert state.propose([], repeating[:37], limit=8) == []  # backing off
    assert state.propose([], repeating[:38], limit=8) == [3, 1, 2, 3, 1]  # its draft length is down to 5
    state.record(5, 0, num_output=40)
    assert state.resume_at == 42  # three in a row: two
    state.record(2, 1, num_output=43)
    assert state.misses == 0
    assert (state.proposed, state.accepted, state.steps) == (4 + 6 + 8 + 8 + 7 + 6 + 5 + 2, 4 + 6 + 8 + 3 + 1, 8)


# ----- through the engine -------------------------------------------------------------------------------------


def test_speculation_gives_the_tokens_of_plain_decoding_in_fewer_steps(copying: None) -> None:
    engine, clients = make_engine([["n1"], ["n2"], ["n3"]], depth=3)
    r = request("a", PROMPT, 40)
    [tokens] = asyncio.run(generate(engine, [r]))
    assert tokens == expected_tokens(PROMPT, 40)
    assert r.drafting is not None and r.drafting.accepted > 0 and r.drafting.proposed > r.drafting.accepted
    steps = len(node(clients, "n1").forwarded)
    assert steps < 40 - r.drafting.accepted + 2  # each accepted draft saved a step (the prefill is one more)


def test_plain_and_verify_rows_share_micro_batches_and_every_sequence_gets_its_tokens(copying: None) -> None:
    engine, clients = make_engine([["n1"], ["n2"]], depth=2)
    prompts = [PROMPT, [3, 4, 5], [21, 22, 23, 24, 25, 26], [7, 8]]
    reqs = [request(f"r{i}", p, 25 + 3 * i) for i, p in enumerate(prompts)]
    reqs[1].speculative = False
    results = asyncio.run(generate(engine, reqs))
    assert results == [expected_tokens(p, 25 + 3 * i) for i, p in enumerate(prompts)]
    assert reqs[1].drafting is None  # the caller turned it off
    mixed = [f for f in node(clients, "n1").forwarded if len(f.seq_ids) > 1 and len(f.token_ids or []) > len(f.seq_ids)]
    assert mixed  # some micro-batch carried several sequences and drafts


def test_a_model_with_speculation_off_sends_no_drafts(copying: None) -> None:
    engine, clients = make_engine([["n1"], ["n2"]])
    engine.speculation = type(engine.speculation)("off")
    r = request("a", PROMPT, 20)
    [tokens] = asyncio.run(generate(engine, [r]))
    assert tokens == expected_tokens(PROMPT, 20) and r.drafting is None
    assert all(len(f.token_ids or []) <= 1 for f in node(clients, "n1").forwarded[1:])  # ring steps: none


@pytest.mark.parametrize("max_tokens", [1, 2, 3, 9, 17])
def test_drafts_never_go_past_max_tokens(copying: None, max_tokens: int) -> None:
    engine, clients = make_engine([["n1"], ["n2"]])
    r = request("a", PROMPT, max_tokens)
    [tokens] = asyncio.run(generate(engine, [r]))
    assert tokens == expected_tokens(PROMPT, max_tokens)
    for f in node(clients, "n1").forwarded:
        assert len(f.token_ids or []) <= max(len(PROMPT), max_tokens)


def test_an_end_token_among_the_accepted_drafts_ends_the_output_there(copying: None) -> None:
    plain = expected_tokens(PROMPT, 30)
    eos = 15  # the third token: the second step drafts it from the prompt (13 14 -> 15 16 17 ...)
    r = request("a", PROMPT, 30)
    r.eos_token_ids = frozenset({eos})

    async def scenario() -> list[TokenEvent]:
        engine, _ = make_engine([["n1"], ["n2"]])
        engine.ring_decode = False  # else the step that makes 15 is sent ahead, without drafts
        engine.start()
        engine.submit(r)
        events = await events_of(r)
        await engine.stop()
        return events

    events = asyncio.run(scenario())
    assert tokens_of(events) == plain[:3] == [13, 14, eos] and events[-1].finish_reason == "eos"
    assert r.drafting is not None and r.drafting.accepted > 0


def test_a_node_lost_during_speculation_replays_and_the_tokens_are_unchanged(copying: None) -> None:
    engine, clients = make_engine([["n1"], ["n2", "n3"]], depth=2)
    node(clients, "n2").lose_stream_at = 6
    r = request("a", PROMPT, 40)
    [tokens] = asyncio.run(generate(engine, [r]))
    assert tokens == expected_tokens(PROMPT, 40) and r.failovers == 1


def test_a_verify_entry_moves_the_positions_to_the_last_accepted_draft() -> None:
    r = request("a", [1, 2, 3], 10)
    r.output_ids = [4]
    r.num_computed = r.num_scheduled = 3
    r.drafting = DraftState(8)
    entry = BatchEntry(r, 3, (4, 5, 6, 7), True, drafts=(5, 6, 7))  # position 3 holds 4, the drafts 4..6
    r.num_scheduled = 7
    tokens, reason = take_tokens(entry, 9, accepted=1)
    assert tokens == (5, 9) and reason == "" and r.output_ids == [4, 5, 9]
    assert r.num_computed == r.num_scheduled == 5  # positions 3 (token 4) and 4 (draft 5); 9 is the next input
    assert (r.drafting.proposed, r.drafting.accepted) == (3, 1)


def test_speculation_and_ring_decode_take_turns_on_a_lone_stream(copying: None) -> None:
    engine, clients = make_engine([["n1"], ["n2"], ["n3"]], depth=3)
    r = request("a", PROMPT, 60)
    [tokens] = asyncio.run(generate(engine, [r]))
    assert tokens == expected_tokens(PROMPT, 60)
    first = node(clients, "n1").forwarded
    assert any(f.tokens_from_peer for f in first)  # ringing where the context has nothing to draft from
    assert r.drafting is not None and r.drafting.accepted > 0


def test_metrics_count_the_drafts_verified_and_accepted(copying: None) -> None:
    def value(name: str) -> float:
        return REGISTRY.get_sample_value(name, {"model_name": "m"}) or 0.0

    names = ("shardline_spec_decode_num_draft_tokens_total", "shardline_spec_decode_num_accepted_tokens_total",
             "shardline_spec_decode_num_drafts_total")
    before = [value(n) for n in names]
    engine, _ = make_engine([["n1"], ["n2"]])
    r = request("a", PROMPT, 30)
    asyncio.run(generate(engine, [r]))
    assert r.drafting is not None
    proposed, accepted, steps = (value(n) - b for n, b in zip(names, before))
    assert (proposed, accepted, steps) == (r.drafting.proposed, r.drafting.accepted, r.drafting.steps)
    assert accepted > 0
