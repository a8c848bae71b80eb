"""Shard-to-shard forwarding (coordinator/forwarding.py) over fake nodes: what each stage is sent, sequences that
fail alone on the way, and a failed stage: the stages waiting for its output give the micro-batch up, and the
failure that explains the others is the one raised."""

from __future__ import annotations

import asyncio

import pytest

from coordinator.node_client import StageError
from coordinator.pipeline import Pipeline, Replica
from coordinator.scheduler import BatchEntry, MicroBatchPlan
from tests.unit.coordinator.builders import generate, make_engine, make_pipeline, node, request
from tests.unit.fakes import next_token


def _route(pipeline: Pipeline) -> list[Replica]:
    return [g.replicas[0] for g in pipeline.groups]


def _plan(*names: str) -> MicroBatchPlan:
    return MicroBatchPlan(0, tuple(BatchEntry(request(n), 0, (1, 2, 3), True) for n in names))


def test_every_stage_is_sent_the_micro_batch_with_where_its_input_comes_from_and_its_output_goes() -> None:
    pipeline, clients = make_pipeline([["n1"], ["n2"], ["n3"]])
    result = asyncio.run(pipeline.step(_route(pipeline), _plan("a", "b")))
    assert result.next_token_ids == [next_token([1, 2, 3])] * 2 and not result.failed
    sent = [node(clients, n).forwarded[0] for n in ("n1", "n2", "n3")]
    addresses = [r.client.node.address for r in _route(pipeline)]
    assert [f.token_ids for f in sent] == [[1, 2, 3, 1, 2, 3], [], []]  # only the first stage embeds
    assert [f.from_peer for f in sent] == [False, True, True]
    assert [f.forward_to for f in sent] == [addresses[1], addresses[2], ""]
    assert {f.pipeline_id for f in sent} == {pipeline.pipeline_id}
    assert len(result.stage_seconds) == 3 and [r.micro_batches for r in _route(pipeline)] == [1, 1, 1]


def test_when_every_sequence_fails_on_the_first_stage_the_last_answers_for_none() -> None:
    pipeline, clients = make_pipeline([["n1"], ["n2"], ["n3"]])
    node(clients, "n1").fail_rows = {"x-0"}
    result = asyncio.run(pipeline.step(_route(pipeline), _plan("x")))
    assert result.next_token_ids == [-1] and list(result.failed) == [0] and "n1" in result.failed[0]
    assert node(clients, "n2").caches["m"] == {} and node(clients, "n3").caches["m"] == {}


def test_a_refused_middle_stage_is_blamed_not_the_stage_that_waited_for_it() -> None:
    pipeline, clients = make_pipeline([["n1"], ["n2"], ["n3"]])
    node(clients, "n2").refuse_next = True
    with pytest.raises(StageError) as caught:
        asyncio.run(pipeline.step(_route(pipeline), _plan("a")))
    assert caught.value.node_id == "n2" and caught.value.code == "RESOURCE_EXHAUSTED"
    assert not caught.value.stream_lost
    assert "m" not in node(clients, "n3").caches or node(clients, "n3").caches["m"] == {}


def test_a_lost_middle_stage_fails_over_and_the_last_stage_gives_the_micro_batch_up() -> None:
    async def scenario() -> StageError:
        pipeline, clients = make_pipeline([["n1"], ["n2"], ["n3"]])
        node(clients, "n2").lose_stream_at = 1
        try:
            await pipeline.step(_route(pipeline), _plan("a"))
        except StageError as e:
            return e
        raise AssertionError("the step did not fail")

    error = asyncio.run(scenario())  # returns: the last stage did not wait for an input that never comes
    assert error.node_id == "n2" and error.stream_lost


def test_the_engine_generates_the_same_tokens_star_or_direct() -> None:
    def tokens(forwarding: str) -> list[list[int]]:
        engine, _ = make_engine([["n1"], ["n2"], ["n3"]], depth=2, forwarding=forwarding)
        return asyncio.run(generate(engine, [request(f"r{i}", [i + 1, 2, 3], max_tokens=5) for i in range(3)]))

    assert tokens("direct") == tokens("star")
