"""Pipelined prefill: a lane with budget left takes the next chunk of a prompt whose earlier chunk is still in
flight on another lane of the same route; the output is the same as chunk after chunk, also across a failover."""

from __future__ import annotations

import asyncio

from coordinator.cluster import pipelines_prefill
from coordinator.request import Request
from coordinator.scheduler import Scheduler
from protos.data_structures import SamplingParams
from tests.unit.coordinator.builders import expected_tokens, generate, make_engine, node, request


def _req(prompt_len: int, max_tokens: int = 4) -> Request:
    return Request(request_id="long", seq_id="seq-long", prompt_ids=list(range(10, 10 + prompt_len)),
                   max_tokens=max_tokens, sampling=SamplingParams(), stop_token_ids=frozenset(),
                   eos_token_ids=frozenset())


def test_the_chunks_of_one_prompt_go_out_on_idle_lanes_of_the_same_route_before_the_first_comes_back() -> None:
    s = Scheduler(kv_capacity_tokens=1000, depth=3, max_batch_tokens=10)
    s.set_lanes([("n1", "n2")] * 3, {0, 1, 2})
    r = _req(25)
    s.add(r)
    s.admit()
    plans = [s.plan(lane) for lane in range(3)]
    assert [(e.start_pos, len(e.token_ids), e.wants_token) for p in plans if p for e in p.entries] == [
        (0, 10, False), (10, 10, False), (20, 5, True)]
    assert r.batches_in_flight == 3 and r.lane == plans[0].lane  # type: ignore[union-attr]
    assert s.plan(0) is None  # every position is out: the next step is a decode, once the token is back


def test_a_lane_of_another_route_does_not_take_a_chunk() -> None:
    s = Scheduler(kv_capacity_tokens=1000, depth=2, max_batch_tokens=10)
    s.set_lanes([("n1", "n2"), ("n3", "n2")], {0, 1})
    r = _req(25)
    s.add(r)
    s.admit()
    home = r.lane
    assert s.plan(home) is not None and s.plan(1 - home) is None  # its KV lives on its own route only


def test_a_chunk_that_comes_back_after_its_request_restarted_is_ignored() -> None:
    s = Scheduler(kv_capacity_tokens=1000, depth=2, max_batch_tokens=10)
    s.set_lanes([("n1",), ("n1",)], {0, 1})
    r = _req(25)
    s.add(r)
    s.admit()
    first, second = s.plan(0), s.plan(1)
    assert first is not None and second is not None
    r.restart_on_new_route("seq-long-2")  # its route lost a node while both chunks were out
    s.postprocess(second, [-1], [0.0], {})
    assert r.num_computed == 0  # the old sequence's chunk says nothing about the new one


def test_a_long_prompt_is_pipelined_and_generates_what_chunk_after_chunk_does() -> None:
    prompt = list(range(5, 45))
    engine, clients = make_engine([["n1"], ["n2"], ["n3"]], depth=3, max_batch_tokens=10)
    [tokens] = asyncio.run(generate(engine, [request("a", prompt, 6)]))
    assert tokens == expected_tokens(prompt, 6)
    first_stage = node(clients, "n1").forwarded
    assert max(f.in_flight for f in first_stage) > 1  # a chunk left while an earlier one was in flight


def test_a_failover_during_a_pipelined_prefill_replays_to_the_same_tokens() -> None:
    prompt = list(range(5, 45))
    engine, clients = make_engine([["n1"], ["n2", "n4"], ["n3"]], depth=3, max_batch_tokens=10)
    node(clients, "n2").lose_stream_at = 2  # the second chunk breaks the stream to n2
    r = request("a", prompt, 6)
    [tokens] = asyncio.run(generate(engine, [r]))
    assert tokens == expected_tokens(prompt, 6) and r.failovers >= 1


def test_auto_pipelines_prefill_only_when_the_stages_span_machines() -> None:
    assert pipelines_prefill("auto", ["host-a", "host-b", "host-a"])
    assert not pipelines_prefill("auto", ["host-a", "host-a", "host-a"])
    assert pipelines_prefill("always", ["host-a"]) and not pipelines_prefill("never", ["host-a", "host-b"])
