"""coordinator: a sequence that fails alone on a node (the node's ForwardResponse.seq_errors) ends alone, with its
own message; the other sequences of the micro-batch go on with their tokens; the stages after the failing one never
see it. A request cancelled while it waits leaves the queue at once. Fake stages, no processes."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from coordinator.engine import ModelEngine
from coordinator.model_meta import ModelMeta
from coordinator.pipeline import Pipeline, Replica, StageGroup
from coordinator.request import Request
from coordinator.scheduler import BatchEntry, MicroBatchPlan, QueueFull, Scheduler
from protos import common_pb2, shard_pb2
from protos.data_structures import LayerRange, SamplingParams


class FakeStage:
    """One node's Forward stream: rows in, rows out; ``fail`` names sequences it fails alone."""

    def __init__(self, node_id: str, last: bool, fail: frozenset[str] = frozenset()) -> None:
        self.node = SimpleNamespace(id=node_id, address=f"{node_id}:1")
        self.last, self.fail = last, fail
        self.seen: list[list[str]] = []
        self.on_stream_lost = None

    async def send(self, request: shard_pb2.ForwardRequest) -> asyncio.Future[shard_pb2.ForwardResponse]:
        ids = [s.seq_id for s in request.seqs]
        self.seen.append(ids)
        reply = shard_pb2.ForwardResponse(batch_id=request.batch_id, forward_seconds=0.001)
        for sid in ids:
            if sid in self.fail:
                reply.seq_errors.add(seq_id=sid, code="INVALID_ARGUMENT", message=f"{sid} is bad here")
        ok = [sid for sid in ids if sid not in self.fail]
        if self.last:
            reply.next_token_ids.extend(-1 if sid in self.fail else 100 + len(sid) for sid in ids)
        else:
            reply.hidden.CopyFrom(common_pb2.Tensor(dtype="float32", shape=[len(ok), 1], data=b"\0" * 4 * len(ok)))
        fut: asyncio.Future[shard_pb2.ForwardResponse] = asyncio.get_running_loop().create_future()
        fut.set_result(reply)
        return fut

    async def release(self, seq_ids: list[str]) -> int:
        return len(seq_ids)

    def drop_stream(self, why: str) -> None:
        pass


def _req(name: str, n_prompt: int = 3, max_tokens: int = 4) -> Request:
    return Request(request_id=name, seq_id=name, prompt_ids=list(range(1, n_prompt + 1)), max_tokens=max_tokens,
                   sampling=SamplingParams(), stop_token_ids=frozenset(), eos_token_ids=frozenset())


def _pipeline(*stages: FakeStage) -> Pipeline:
    groups = [StageGroup(LayerRange(i, i + 1), [Replica(s, LayerRange(i, i + 1), 1000, "ready")])  # type: ignore
              for i, s in enumerate(stages)]
    return Pipeline("m", groups)


def test_a_sequence_failing_on_a_middle_stage_leaves_the_batch_there() -> None:
    first, middle, last = FakeStage("n1", False), FakeStage("n2", False, frozenset({"bad"})), FakeStage("n3", True)
    pipeline = _pipeline(first, middle, last)
    plan = MicroBatchPlan(0, tuple(BatchEntry(_req(n), 0, (1, 2, 3), True) for n in ("a", "bad", "ccc")))
    result = asyncio.run(pipeline.step([g.replicas[0] for g in pipeline.groups], plan))
    assert first.seen == [["a", "bad", "ccc"]] and middle.seen == [["a", "bad", "ccc"]]
    assert last.seen == [["a", "ccc"]]  # never sees the sequence that failed before it
    assert result.next_token_ids == [101, -1, 103]
    assert list(result.failed) == [1] and "n2" in result.failed[1] and "bad is bad here" in result.failed[1]


def test_when_every_sequence_fails_the_later_stages_get_nothing_and_keep_their_releases() -> None:
    first, last = FakeStage("n1", False, frozenset({"x"})), FakeStage("n2", True)
    pipeline = _pipeline(first, last)
    last_replica = pipeline.groups[1].replicas[0]
    last_replica.pending_release = ["old"]
    plan = MicroBatchPlan(0, (BatchEntry(_req("x"), 0, (1, 2, 3), True),))
    result = asyncio.run(pipeline.step([g.replicas[0] for g in pipeline.groups], plan))
    assert last.seen == [] and result.next_token_ids == [-1] and list(result.failed) == [0]
    assert last_replica.pending_release == ["old"]  # goes with the next micro-batch or Release call


def _engine(stages: list[FakeStage], max_waiting: int = 8) -> ModelEngine:
    meta = ModelMeta(path=None, model_type="llama", num_layers=len(stages), max_context=256, vocab_size=1000,  # type: ignore[arg-type]
                     eos_token_ids=())
    return ModelEngine("m", meta, _pipeline(*stages), Scheduler(kv_capacity_tokens=1000, max_waiting=max_waiting))


def test_engine_fails_only_the_bad_request_and_the_others_finish() -> None:
    async def run() -> dict[str, list]:
        engine = _engine([FakeStage("n1", False, frozenset({"bad"})), FakeStage("n2", True)])
        engine.loaded = True
        engine._sync_routes()
        reqs = {n: _req(n) for n in ("a", "bad", "cc")}
        for r in reqs.values():
            engine.submit(r)
        engine.start()
        events: dict[str, list] = {}
        for name, r in reqs.items():
            events[name] = []
            while not events[name] or not events[name][-1].finish_reason:
                events[name].append(await asyncio.wait_for(r.events.get(), 30))
        await engine.stop()
        return events

    events = asyncio.run(run())
    assert events["bad"][-1].finish_reason == "error" and "bad is bad here" in events["bad"][-1].error
    for name in ("a", "cc"):
        assert events[name][-1].finish_reason == "length"
        assert [t for e in events[name] for t in e.token_ids] == [100 + len(name)] * 4


def test_a_cancelled_waiting_request_stops_counting_against_the_queue_at_once() -> None:
    async def run() -> None:
        engine = _engine([FakeStage("n1", True)], max_waiting=1)  # not loaded: requests wait
        waiting = _req("w")
        engine.submit(waiting)
        try:
            engine.submit(_req("next"))
            raise AssertionError("the queue bound of 1 did not hold")
        except QueueFull:
            pass
        engine.cancel(waiting)
        assert not engine.scheduler.waiting and waiting.finish_reason == "cancelled"
        engine.submit(_req("next"))  # room at once, before any engine tick

    asyncio.run(run())
