"""Prefix caching, the coordinator's side, over fake nodes: a request whose context starts with blocks its route
keeps starts after them on every stage (same tokens), finished sequences and prompts are kept, cached blocks are
evicted least recently used when admission needs the room (never one a running request uses), a node that lacks a
block it was counted on costs only a restart, and a lost node's picture is dropped."""

from __future__ import annotations

import asyncio

from coordinator.engine import ModelEngine
from coordinator.kv_admission import cacheable_blocks
from coordinator.prefix_cache import PrefixIndex, chain_hashes
from coordinator.request import Request
from coordinator.scheduler import Scheduler
from protos.data_structures import KV_BLOCK_SIZE
from tests.unit.coordinator.builders import events_of, expected_tokens, make_engine, node, request, settled, tokens_of

PROMPT = [(7 * i + 3) % 50 + 1 for i in range(40)]  # two full blocks and 8 more positions


async def _run(engine: ModelEngine, *reqs: Request) -> list[list[int]]:
    for r in reqs:
        engine.submit(r)
    out = [tokens_of(await events_of(r)) for r in reqs]
    await settled(engine)
    return out


def _first_slices(clients, node_id: str, seq_id: str) -> list:  # type: ignore[no-untyped-def]
    return [s for f in node(clients, node_id).forwarded for s in f.seqs if s.seq_id == seq_id][:1]


def test_a_repeated_prompt_starts_on_its_cached_blocks_on_every_stage_with_the_same_tokens() -> None:
    async def scenario() -> None:
        engine, clients = make_engine([["n1"], ["n2"]], prefix_caching=True)
        engine.start()
        first, again = request("a", PROMPT, 6), request("b", PROMPT, 6)
        assert await _run(engine, first) == [expected_tokens(PROMPT, 6)]
        assert await _run(engine, again) == [expected_tokens(PROMPT, 6)]
        await engine.stop()
        hashes = chain_hashes(PROMPT, [], 2)
        for n in ("n1", "n2"):
            [s] = _first_slices(clients, n, "b-0")
            assert (s.start_pos, list(s.prefix_hashes), s.max_total_tokens) == (32, hashes, 46)
        assert (first.cached_tokens, again.cached_tokens) == (0, 32)

    asyncio.run(scenario())


def test_the_next_turn_of_a_conversation_starts_after_the_answer_it_extends() -> None:
    async def scenario() -> None:
        engine, clients = make_engine([["n1"], ["n2"]], prefix_caching=True)
        engine.start()
        [answer] = await _run(engine, request("t1", PROMPT, 30))
        turn2 = PROMPT + answer + [9, 9, 9]
        follow = request("t2", turn2, 4)
        assert await _run(engine, follow) == [expected_tokens(turn2, 4)]
        await engine.stop()
        # the answer's blocks were kept when it finished: positions computed were 40 + 29 = 69 -> 4 full blocks
        assert follow.cached_tokens == 4 * KV_BLOCK_SIZE
        [s] = _first_slices(clients, "n1", "t2-0")
        assert s.start_pos == 64

    asyncio.run(scenario())


def test_without_room_the_least_recently_used_unused_blocks_are_evicted_and_nothing_fails() -> None:
    async def scenario() -> None:
        engine, clients = make_engine([["n1"], ["n2"]], kv=200, prefix_caching=True)
        engine.start()
        prompts = [[p + 1] * 40 for p in range(3)]  # each keeps 2 full blocks (32 tokens) when done
        for i, p in enumerate(prompts):
            assert await _run(engine, request(f"r{i}", p, 8)) == [expected_tokens(p, 8)]
        index = engine.scheduler.prefix
        assert index is not None and index.blocks_on("n1") == 6  # 96 tokens cached
        big = [60] * 150  # needs 150 + 8 = 158 of 200: three blocks' room must be freed
        assert await _run(engine, request("big", big, 8)) == [expected_tokens(big, 8)]
        await engine.stop()
        oldest = chain_hashes(prompts[0], [], 2)
        assert index.hits(("n1", "n2"), oldest) == 0  # the oldest prompt went first, from its end
        assert index.hits(("n1", "n2"), chain_hashes(prompts[2], [], 2)) == 2
        assert node(clients, "n1").prefix["m"].keys() == node(clients, "n2").prefix["m"].keys()
        assert all(h not in node(clients, "n1").prefix["m"] for h in oldest)

    asyncio.run(scenario())


def test_blocks_a_running_request_started_on_are_never_evicted() -> None:
    index = PrefixIndex()
    index.add("n1", [1, 2, 3])
    assert index.evict("n1", 3, pinned={1, 2}) == [3]
    assert index.blocks_on("n1") == 2 and index.take_evictions() == {"n1": [3]}


def test_a_node_that_lacks_a_counted_block_costs_a_restart_without_the_cache() -> None:
    async def scenario() -> None:
        engine, clients = make_engine([["n1"], ["n2"]], prefix_caching=True)
        engine.start()
        await _run(engine, request("a", PROMPT, 4))
        node(clients, "n2").prefix["m"].clear()  # behind the coordinator's back
        again = request("b", PROMPT, 4)
        assert await _run(engine, again) == [expected_tokens(PROMPT, 4)]
        await engine.stop()
        assert not again.use_prefix_cache and again.failovers == 1

    asyncio.run(scenario())


def test_a_lost_node_takes_its_cached_blocks_with_it() -> None:
    async def scenario() -> None:
        engine, clients = make_engine([["n1"], ["n2", "n3"]], depth=2, prefix_caching=True)
        engine.start()
        await _run(engine, request("a", PROMPT, 4))
        index = engine.scheduler.prefix
        assert index is not None
        on = [n for n in ("n2", "n3") if index.blocks_on(n)]
        assert len(on) == 1
        engine.replicas.replica_lost(engine.pipeline.replica_on(on[0]), "test")
        assert index.blocks_on(on[0]) == 0 and index.blocks_on("n1") == 2
        again = request("b", PROMPT, 4)
        assert await _run(engine, again) == [expected_tokens(PROMPT, 4)]
        await engine.stop()
        assert again.cached_tokens == 0  # the other replica's route has none of it

    asyncio.run(scenario())


def test_prompt_log_probabilities_are_never_served_from_the_cache() -> None:
    engine, _ = make_engine([["n1"]], prefix_caching=True)
    req = request("a", PROMPT, 4)
    req.prompt_logprobs = True
    assert cacheable_blocks(engine.scheduler.prefix, req) == []
    assert len(cacheable_blocks(engine.scheduler.prefix, request("b", PROMPT, 4))) == 2


def test_a_cached_prefix_draws_requests_to_its_route_only_while_that_route_is_not_much_busier() -> None:
    scheduler = Scheduler(1000, depth=2, prefix=PrefixIndex())
    scheduler.set_lanes([("a1",), ("a2",)], {0, 1})
    assert scheduler.prefix is not None
    scheduler.prefix.add("a2", chain_hashes(PROMPT, [], 2))
    reqs = [request(f"r{i}", PROMPT, 4) for i in range(5)]
    for r in reqs:
        scheduler.add(r)
    scheduler.admit()
    assert [r.lane for r in reqs] == [1, 1, 1, 0, 1]  # the fourth: lane 1 was AFFINITY_SLACK + 1 busier
    assert [r.cached_positions for r in reqs] == [32, 32, 32, 0, 32]
