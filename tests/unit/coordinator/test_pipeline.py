"""Pipeline.step over fake nodes: a micro-batch relayed along a 2-3 stage route, sequences that fail alone on a
node (they leave the batch there), releases riding along, and the issue order of micro-batches on each node."""

from __future__ import annotations

import asyncio

import pytest

from coordinator.pipeline import Pipeline, Replica
from coordinator.scheduler import BatchEntry, MicroBatchPlan
from tests.unit.coordinator.builders import make_pipeline, node, request
from tests.unit.fakes import next_token


def _route(pipeline: Pipeline) -> list[Replica]:
    return [g.replicas[0] for g in pipeline.groups]


def _plan(*names: str, lane: int = 0) -> MicroBatchPlan:
    return MicroBatchPlan(lane, tuple(BatchEntry(request(n), 0, (1, 2, 3), True) for n in names))


def test_a_three_stage_route_returns_the_last_stages_tokens() -> None:
    pipeline, clients = make_pipeline([["n1"], ["n2"], ["n3"]])
    result = asyncio.run(pipeline.step(_route(pipeline), _plan("a", "b")))
    assert result.next_token_ids == [next_token([1, 2, 3])] * 2 and not result.failed
    assert len(result.stage_seconds) == 3
    for n in ("n1", "n2", "n3"):  # every stage saw both sequences and now holds their 3 positions
        assert node(clients, n).forwarded[0].seq_ids == ["a-0", "b-0"]
        assert node(clients, n).caches["m"] == {"a-0": [1, 2, 3], "b-0": [1, 2, 3]}
    assert [r.micro_batches for r in _route(pipeline)] == [1, 1, 1]


def test_a_prefill_chunk_that_does_not_end_the_prompt_samples_nothing() -> None:
    pipeline, _ = make_pipeline([["n1"], ["n2"]])
    plan = MicroBatchPlan(0, (BatchEntry(request("a", [1, 2, 3, 4]), 0, (1, 2), False),))
    assert asyncio.run(pipeline.step(_route(pipeline), plan)).next_token_ids == [-1]


@pytest.mark.parametrize("forwarding", ["star", "direct"])
def test_a_sequence_failing_on_a_middle_stage_leaves_the_batch_there(forwarding: str) -> None:
    pipeline, clients = make_pipeline([["n1"], ["n2"], ["n3"]], forwarding=forwarding)
    node(clients, "n2").fail_rows = {"bad-0"}
    result = asyncio.run(pipeline.step(_route(pipeline), _plan("a", "bad", "c")))
    assert node(clients, "n2").forwarded[0].seq_ids == ["a-0", "bad-0", "c-0"]
    if forwarding == "star":  # the coordinator leaves it out of what it relays
        assert node(clients, "n3").forwarded[0].seq_ids == ["a-0", "c-0"]
    assert set(node(clients, "n3").caches["m"]) == {"a-0", "c-0"}  # never runs the one that failed before it
    assert result.next_token_ids == [next_token([1, 2, 3]), -1, next_token([1, 2, 3])]
    assert list(result.failed) == [1] and "n2" in result.failed[1] and "chosen to fail" in result.failed[1]


def test_a_sequence_failing_on_the_last_stage_fails_alone() -> None:
    pipeline, clients = make_pipeline([["n1"], ["n2"]])
    node(clients, "n2").fail_rows = {"b-0"}
    result = asyncio.run(pipeline.step(_route(pipeline), _plan("a", "b")))
    assert result.next_token_ids == [next_token([1, 2, 3]), -1] and list(result.failed) == [1]


def test_when_every_sequence_fails_the_later_stages_get_nothing_and_keep_their_releases() -> None:
    pipeline, clients = make_pipeline([["n1"], ["n2"]], forwarding="star")
    node(clients, "n1").fail_rows = {"x-0"}
    last = pipeline.groups[1].replicas[0]
    last.pending_release = ["old"]
    result = asyncio.run(pipeline.step(_route(pipeline), _plan("x")))
    assert node(clients, "n2").forwarded == [] and result.next_token_ids == [-1] and list(result.failed) == [0]
    assert last.pending_release == ["old"]  # goes with the next micro-batch or Release call


def test_pending_releases_ride_on_the_micro_batch_to_their_node() -> None:
    pipeline, clients = make_pipeline([["n1"], ["n2"]])
    first, last = _route(pipeline)
    first.pending_release, last.pending_release = ["s1"], ["s2"]
    asyncio.run(pipeline.step([first, last], _plan("a")))
    assert node(clients, "n1").forwarded[0].release_seq_ids == ["s1"]
    assert node(clients, "n2").forwarded[0].release_seq_ids == ["s2"]
    assert first.pending_release == [] and last.pending_release == []


def test_a_refused_batch_keeps_its_releases_for_later() -> None:
    pipeline, clients = make_pipeline([["n1"], ["n2"]])
    first, last = _route(pipeline)
    last.pending_release = ["s2"]
    node(clients, "n2").refuse_next = True
    try:
        asyncio.run(pipeline.step([first, last], _plan("a")))
        raise AssertionError("the refused batch did not raise")
    except Exception as e:  # StageError(stream_lost=False)
        assert "RESOURCE_EXHAUSTED" in str(e) and not e.stream_lost
    assert last.pending_release == ["s2"]  # may not have arrived; release ids are idempotent


def test_micro_batches_reach_every_node_in_issue_order() -> None:
    async def scenario() -> list[list[int]]:
        pipeline, clients = make_pipeline([["n1"], ["n2"]])
        gate = asyncio.Event()
        node(clients, "n1").hold_next = gate  # the first micro-batch is slow to write on n1
        first = asyncio.create_task(pipeline.step(_route(pipeline), _plan("a", lane=0)))
        second = asyncio.create_task(pipeline.step(_route(pipeline), _plan("b", lane=1)))
        while node(clients, "n1").hold_next is not None:  # the first took its turn and waits at the gate
            await asyncio.sleep(0)
        for _ in range(10):
            await asyncio.sleep(0)  # the second had every chance to overtake
        assert node(clients, "n1").forwarded == []
        gate.set()
        await asyncio.gather(first, second)
        return [[f.seq_ids[0] for f in node(clients, n).forwarded] for n in ("n1", "n2")]

    assert asyncio.run(scenario()) == [["a-0", "b-0"], ["a-0", "b-0"]]


def test_flush_releases_calls_release_on_idle_live_replicas_only() -> None:
    pipeline, clients = make_pipeline([["n1"], ["n2", "n3"]])
    n1, n2, n3 = pipeline.replicas
    n1.pending_release, n2.pending_release, n3.pending_release = ["a"], ["b"], ["c"]
    n3.state = "down"
    asyncio.run(pipeline.flush_releases(busy={n1}))
    assert node(clients, "n1").released == [] and n1.pending_release == ["a"]  # rides on its next micro-batch
    assert node(clients, "n2").released == ["b"] and node(clients, "n3").released == []


def test_each_stage_is_told_how_many_micro_batches_are_in_flight() -> None:
    async def scenario() -> tuple[list[int], list[int]]:
        pipeline, clients = make_pipeline([["n1"], ["n2"]])
        await pipeline.step(_route(pipeline), _plan("a"))  # alone: a lone stream
        alone = [f.in_flight for n in ("n1", "n2") for f in node(clients, n).forwarded]
        gate = asyncio.Event()
        node(clients, "n2").hold_next = gate  # b waits on n2 until c has gone through n1
        first = asyncio.create_task(pipeline.step(_route(pipeline), _plan("b", lane=0)))
        while node(clients, "n2").hold_next is not None:
            await asyncio.sleep(0)
        second = asyncio.create_task(pipeline.step(_route(pipeline), _plan("c", lane=1)))
        while len(node(clients, "n1").forwarded) < 3:
            await asyncio.sleep(0)
        gate.set()
        await asyncio.gather(first, second)
        return alone, [f.in_flight for f in node(clients, "n1").forwarded[1:]]

    alone, together = asyncio.run(scenario())
    assert alone == [1, 1] and together == [1, 2]  # b alone on n1; c there while b was still in flight
