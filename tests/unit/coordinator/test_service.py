"""CoordinatorServicer with a fake registry and an engine over fake nodes: Generate's status codes (unknown, pending,
not ready, invalid requests, never fits, queue full) and its stream, ListModels, AddModel's errors."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import grpc
import pytest

from coordinator.engine import ModelEngine
from coordinator.registry import ModelRequest, PendingModel, RegistryError
from coordinator.service import CoordinatorServicer
from coordinator.traffic import TrafficHistory
from protos import coordinator_pb2
from protos.config import ModelConfig, parse_config
from tests.unit.coordinator.builders import make_engine
from tests.unit.fakes import Aborted, FakeContext

GRPC = grpc.StatusCode


@dataclass
class FakeRegistry:
    engines: dict[str, ModelEngine] = field(default_factory=dict)
    pending: dict[str, PendingModel] = field(default_factory=dict)
    config: Any = field(default_factory=lambda: parse_config({
        "model_name": "m", "nodes": [{"id": "n1", "address": "127.0.0.1:47400"}], "limits": {"max_prompt_tokens": 64}}))
    membership: Any = field(default_factory=lambda: SimpleNamespace(status={}, state=lambda n: "ready"))
    added: list[ModelRequest] = field(default_factory=list)
    refuse: RegistryError | None = None

    def state(self, name: str) -> str:
        return "pending" if name in self.pending else "serving" if self.engines[name].ready else "unavailable"

    async def add(self, request: ModelRequest) -> str:
        if self.refuse:
            raise self.refuse
        self.added.append(request)
        return "loading"


def _servicer(**engine_kw: Any) -> tuple[CoordinatorServicer, FakeRegistry, ModelEngine]:
    engine, _ = make_engine([["n1"], ["n2"]], **engine_kw)
    registry = FakeRegistry(engines={"m": engine})
    return CoordinatorServicer(registry), registry, engine  # type: ignore[arg-type]


async def _generate(servicer: CoordinatorServicer, **kw: Any) -> list[coordinator_pb2.GenerateResponse]:
    request = coordinator_pb2.GenerateRequest(**{"model": "m", "prompt_token_ids": [1, 2, 3], "max_tokens": 3, **kw})
    return [r async for r in servicer.Generate(request, FakeContext())]  # type: ignore[arg-type]


def _code(servicer: CoordinatorServicer, **kw: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(Aborted) as e:
        asyncio.run(_generate(servicer, **kw))
    return e.value.code, str(e.value)


def test_generate_streams_accepted_then_tokens_then_the_finish() -> None:
    async def scenario() -> list[coordinator_pb2.GenerateResponse]:
        servicer, _, engine = _servicer()
        engine.start()
        try:
            return await _generate(servicer, request_id="r1")
        finally:
            await engine.stop()

    replies = asyncio.run(scenario())
    assert replies[0].prompt_tokens == 3 and not replies[0].token_ids  # accepted
    assert [len(r.token_ids) for r in replies[1:]] == [1, 1, 1]
    assert replies[-1].finish_reason == "length" and replies[-1].completion_tokens == 3
    assert list(replies[-1].route) == ["n1", "n2"]


@pytest.mark.parametrize("kw, words", [
    ({"prompt_token_ids": []}, "empty"),
    ({"prompt_token_ids": [1, 1000]}, "[0, 1000)"),
    ({"max_tokens": 0}, "max_tokens must be >= 1"),
    ({"max_tokens": 254}, "exceeds the context"),
    ({"prompt_token_ids": [1] * 65}, "limits.max_prompt_tokens"),
    ({"sampling": coordinator_pb2.GenerateRequest().sampling.__class__(temperature=-1.0)}, "temperature"),
])
def test_invalid_requests_are_invalid_argument(kw: dict[str, Any], words: str) -> None:
    servicer, _, _ = _servicer()
    code, message = _code(servicer, **kw)
    assert code == GRPC.INVALID_ARGUMENT and words in message


def test_generate_error_codes_for_the_models_state() -> None:
    servicer, registry, engine = _servicer()
    assert _code(servicer, model="other")[0] == GRPC.NOT_FOUND
    registry.pending["later"] = PendingModel(ModelRequest(ModelConfig("later", "later")), "does not fit", 0.0)
    code, message = _code(servicer, model="later")
    assert code == GRPC.UNAVAILABLE and "does not fit" in message
    engine.start_draining()
    assert _code(servicer)[0] == GRPC.NOT_FOUND
    servicer.stopping = True
    assert _code(servicer)[0] == GRPC.UNAVAILABLE


def test_a_model_without_a_ready_replica_is_unavailable() -> None:
    servicer, _, engine = _servicer()
    engine.replicas.replica_lost(engine.pipeline.replica_on("n2"), "gone")
    code, message = _code(servicer)
    assert code == GRPC.UNAVAILABLE and "node n2" in message


def test_never_fits_and_queue_full() -> None:
    servicer, _, engine = _servicer(kv=10, max_waiting=1)
    code, message = _code(servicer, max_tokens=8)  # 3 + 8 > 10 KV tokens
    assert code == GRPC.INVALID_ARGUMENT and "lower max_tokens" in message

    async def scenario() -> tuple[grpc.StatusCode, str]:
        first = servicer.Generate(coordinator_pb2.GenerateRequest(model="m", prompt_token_ids=[1], max_tokens=2),
                                  FakeContext())  # type: ignore[arg-type]
        await first.__anext__()  # accepted: it waits (the engine is not running)
        try:
            await _generate(servicer)
            raise AssertionError("the second request was queued")
        except Aborted as e:
            return e.code, str(e)
        finally:
            await first.aclose()  # the client goes away: the request leaves the queue

    code, message = asyncio.run(scenario())
    assert code == GRPC.RESOURCE_EXHAUSTED and "busy" in message
    assert not engine.scheduler.waiting


def test_list_models_shows_served_and_pending_models() -> None:
    servicer, registry, _ = _servicer()
    registry.pending["later"] = PendingModel(ModelRequest(ModelConfig("later", "src")), "does not fit", 5.0)
    reply = asyncio.run(servicer.ListModels(coordinator_pb2.ListModelsRequest(), FakeContext()))  # type: ignore
    served, pending = reply.models
    assert served.name == "m" and served.ready and served.state == "serving" and served.num_stages == 2
    assert [s.node_id for s in served.stages] == ["n1", "n2"] and served.stages[0].kv_capacity_tokens == 1000
    assert pending.name == "later" and pending.state == "pending" and pending.unavailable_reason == "does not fit"


def test_add_model_answers_the_registrys_refusal_and_invalid_specs() -> None:
    servicer, registry, _ = _servicer()
    registry.refuse = RegistryError(GRPC.ALREADY_EXISTS, "model 'm' is already serving")
    with pytest.raises(Aborted) as exists:
        asyncio.run(servicer.AddModel(coordinator_pb2.AddModelRequest(name="m"), FakeContext()))  # type: ignore
    assert exists.value.code == GRPC.ALREADY_EXISTS
    with pytest.raises(Aborted) as bad:
        asyncio.run(servicer.AddModel(coordinator_pb2.AddModelRequest(name="../x"), FakeContext()))  # type: ignore
    assert bad.value.code == GRPC.INVALID_ARGUMENT and not registry.added


def test_stages_and_the_metrics_snapshot_show_each_nodes_last_reported_kv_use() -> None:
    servicer, registry, _ = _servicer()
    shard = SimpleNamespace(model="m", kv_used_tokens=48, kv_blocks_used=3, kv_blocks_total=100, kv_block_size=16)
    registry.membership.status["n2"] = SimpleNamespace(info=SimpleNamespace(shards=[shard]))
    stages = {s.node_id: s for s in servicer.model_info("m", registry.engines["m"]).stages}
    assert (stages["n2"].kv_used_tokens, stages["n2"].kv_blocks_used, stages["n2"].kv_blocks_total,
            stages["n2"].kv_block_size) == (48, 3, 100, 16)
    assert stages["n1"].kv_used_tokens == 0 and stages["n1"].kv_blocks_total == 0  # not polled yet
    [model] = servicer.snapshot().models
    assert {r.node: r.kv_used for r in model.replicas} == {"n1": 0, "n2": 48}


def test_cluster_reply_carries_the_traffic_history_of_served_models() -> None:
    engine, _ = make_engine([["n1"], ["n2"]])
    clock = iter([0.0, 2.0])
    traffic = TrafficHistory(interval_s=2.0, points=10, clock=lambda: next(clock))
    traffic.add_stage("m", "n1", 1.0)
    traffic.add_link("m", "n1", "n2", 64, 0.001)
    traffic.add_stage("removed", "n1", 1.0)  # not served (any more): not in the reply
    traffic.sample()
    servicer = CoordinatorServicer(FakeRegistry(engines={"m": engine}), traffic)  # type: ignore[arg-type]
    reply = asyncio.run(servicer.Cluster(coordinator_pb2.ClusterRequest(), FakeContext()))  # type: ignore[arg-type]
    assert [t.model for t in reply.traffic] == ["m"]
    history = reply.traffic[0]
    assert history.interval_s == 2.0 and [(s.node_id, list(s.busy_share)) for s in history.stages] == [("n1", [0.5])]
    assert [(k.src, k.dst, list(k.bytes_per_s)) for k in history.links] == [("n1", "n2", [32.0])]
    assert list(history.links[0].rtt_ms) == [pytest.approx(1.0)]
