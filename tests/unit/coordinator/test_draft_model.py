"""Speculative decoding with a draft model, over fake nodes: the target model "m" on n1 and n2, the draft model "d"
on its own node. The draft proposes greedily, token after token, as provisional steps; the target verifies. The
tokens are those of plain decoding whether the draft is always right, often wrong, lost, or not served."""

from __future__ import annotations

import asyncio

from coordinator.engine import ModelEngine
from coordinator.request import Request
from coordinator.speculation import SpeculationConfig
from tests.unit.coordinator.builders import events_of, expected_tokens, generate, make_engine, node, request, settled
from tests.unit.fakes import FakeNodeClient, next_token

PROMPT = [11, 12, 13, 14, 15]


def _engines(draft_model: str = "d", depth: int = 1) -> tuple[ModelEngine, ModelEngine, FakeNodeClient]:
    """The target (speculative "draft") and the draft model's engine, both over fake nodes; the draft's node."""
    draft, draft_clients = make_engine([["dn"]])
    target, _ = make_engine([["n1"], ["n2"]], depth=depth)
    target.speculation = SpeculationConfig("draft", 6, draft_model)
    target.use_draft_model({"d": draft})
    return target, draft, node(draft_clients, "dn")


async def _run(target: ModelEngine, draft: ModelEngine, reqs: list[Request]) -> list[list[int]]:
    draft.start()
    try:
        return await generate(target, reqs)
    finally:
        await draft.stop()


def test_a_draft_model_that_agrees_gives_the_plain_tokens_in_few_steps() -> None:
    target, draft, draft_node = _engines()
    r = request("a", PROMPT, 30)
    [tokens] = asyncio.run(_run(target, draft, [r]))
    assert tokens == expected_tokens(PROMPT, 30)
    assert r.drafting is not None and r.drafting.accepted == r.drafting.proposed > 20
    assert r.drafting.model is not None and r.drafting.model.route == (draft.pipeline.model, "dn")
    assert all(f.provisional for f in draft_node.forwarded)
    assert len(draft_node.forwarded) == r.drafting.proposed  # a step per draft (what the cache lacks rides along)


def test_a_draft_model_that_is_often_wrong_still_gives_the_plain_tokens() -> None:
    target, draft, draft_node = _engines()
    draft_node.model = lambda ctx: next_token(ctx) if len(ctx) % 4 else (next_token(ctx) + 1) % 1000
    reqs = [request("a", PROMPT, 30), request("b", [3, 4, 5], 25)]
    results = asyncio.run(_run(target, draft, reqs))
    assert results == [expected_tokens(PROMPT, 30), expected_tokens([3, 4, 5], 25)]
    for r in reqs:
        assert r.drafting is not None and 0 < r.drafting.accepted < r.drafting.proposed


def test_the_draft_caches_rewind_to_the_last_accepted_draft_and_are_released_at_the_end() -> None:
    target, draft, draft_node = _engines()
    draft_node.model = lambda ctx: next_token(ctx) if len(ctx) % 5 else 7
    r = request("a", PROMPT, 40)

    async def scenario() -> None:
        draft.start()
        target.start()
        target.submit(r)
        await events_of(r)
        await settled(target)
        await settled(draft)  # the target's next turn handed the draft cache's release to the draft model's engine
        await target.stop()
        await draft.stop()

    asyncio.run(scenario())
    assert r.drafting is not None and r.drafting.model is not None
    assert r.drafting.model.route == (draft.pipeline.model, "dn")  # never refused (a refusal gives the cache up)
    assert 0 < r.drafting.accepted < r.drafting.proposed
    assert draft_node.caches["m"] == {}  # freed once the request ended


def test_a_lost_draft_model_means_plain_decoding_and_the_same_tokens() -> None:
    target, draft, draft_node = _engines()
    draft_node.lose_stream_at = 6
    r = request("a", PROMPT, 30)
    [tokens] = asyncio.run(_run(target, draft, [r]))
    assert tokens == expected_tokens(PROMPT, 30)
    assert r.drafting is not None and r.drafting.accepted > 0 and r.drafting.misses >= 1  # drafts, then none
    assert draft.pipeline.replicas[0].state == "down"


def test_a_draft_model_that_is_not_served_means_plain_decoding() -> None:
    target, draft, draft_node = _engines(draft_model="gone")
    r = request("a", PROMPT, 12)
    [tokens] = asyncio.run(_run(target, draft, [r]))
    assert tokens == expected_tokens(PROMPT, 12) and not draft_node.forwarded
    assert r.drafting is not None and r.drafting.proposed == 0


def test_sequences_on_several_lanes_draft_and_verify_side_by_side() -> None:
    target, draft, _ = _engines(depth=2)
    prompts = [PROMPT, [3, 4], [9, 9, 9], [21, 22, 23, 24]]
    reqs = [request(f"r{i}", p, 20 + i) for i, p in enumerate(prompts)]
    reqs[2].speculative = False
    results = asyncio.run(_run(target, draft, reqs))
    assert results == [expected_tokens(p, 20 + i) for i, p in enumerate(prompts)]
    assert reqs[2].drafting is None and all(r.drafting and r.drafting.accepted for r in reqs if r is not reqs[2])
