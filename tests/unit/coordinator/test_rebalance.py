"""Live re-placement with fake nodes (no processes, no clock): a node removed under load, a faster node joining, an
explicit request that gains nothing, a slow stage with auto_rebalance. Every stream keeps its exact tokens; the new
layout's shards are loaded beside the old under the next generation's name, and the old ones are unloaded."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import grpc
import pytest

from coordinator.generations import generation_of, served_model, shard_name
from coordinator.rebalance import AUTO_GAIN
from coordinator.registry import ModelRegistry, ModelRequest, RegistryError
from coordinator.request import Request
from protos.config import ModelConfig, NodeConfig, parse_config
from tests.unit.coordinator.builders import events_of, expected_tokens, request, tokens_of
from tests.unit.coordinator.test_registry import _fake, _polled, _registry

MAX_TOKENS = 30


def _prompts(n: int) -> list[list[int]]:
    return [[5 + i, 7, 11 + 2 * i] for i in range(n)]


async def _running(reg: ModelRegistry, n: int, at_least: int = 2) -> tuple[list[Request], list[asyncio.Task]]:
    """``n`` requests on the served model "tiny", each with ``at_least`` tokens out (event-loop turns, no clock)."""
    reqs = [request(f"r{i}", p, MAX_TOKENS) for i, p in enumerate(_prompts(n))]
    for r in reqs:
        reg.engines["tiny"].submit(r)
    events = [asyncio.create_task(events_of(r)) for r in reqs]
    for _ in range(10_000):
        if all(len(r.output_ids) >= at_least for r in reqs):
            return reqs, events
        await asyncio.sleep(0)
    raise AssertionError("the requests did not start")


def _unchanged(reqs: list[Request], events: list[list]) -> None:
    for r, ev in zip(reqs, events):
        assert ev[-1].finish_reason == "length", ev[-1]
        assert tokens_of(ev) == expected_tokens(r.prompt_ids, MAX_TOKENS)
        assert r.failovers == 0  # moved, not failed over


def test_shard_names_of_generations() -> None:
    assert shard_name("m", 1) == "m" and shard_name("m", 3) == "m/g3"
    assert served_model("m/g3") == "m" and served_model("m") == "m" and generation_of("m/g3") == 3


def test_a_node_removed_under_load_moves_its_model_off_it_and_no_token_changes(tmp_path: Path) -> None:
    async def scenario() -> None:
        reg = _registry(tmp_path)
        await _polled(reg)
        await reg.add(ModelRequest(ModelConfig("tiny", "tiny", expected_concurrency=8)))
        old = reg.engines["tiny"]
        assert [r.node_id for r in old.pipeline.replicas] == ["n1", "n2"]
        reqs, events = await _running(reg, 6)
        gate = _fake(reg, "n2").hold_next = asyncio.Event()  # a micro-batch is in flight when the move starts
        with pytest.raises(RegistryError) as refused:
            await reg.remove_node("n1")  # without drain: refused while it holds a shard
        assert "drain=true" in str(refused.value)
        removal = asyncio.create_task(reg.remove_node("n1", drain=True))
        for _ in range(200):
            await asyncio.sleep(0)
        assert old.frozen and not removal.done()  # waits for the step in flight
        gate.set()
        removed = await removal
        assert removed.id == "n1" and "n1" not in reg.nodes
        new = reg.engines["tiny"]
        assert new is not old and new.generation == 2 and new.pipeline.model == "tiny/g2"
        assert [r.node_id for r in new.pipeline.replicas] == ["n2"]
        _unchanged(reqs, await asyncio.gather(*events))
        assert set(_fake(reg, "n2").shards) == {"tiny/g2"} and "tiny" in _fake(reg, "n2").unloaded
        late = request("late", [9, 9, 9], 5)
        old.submit(late)  # a caller that looked the model up before the swap: served by the new layout
        assert tokens_of(await events_of(late)) == expected_tokens([9, 9, 9], 5)
        assert await reg.remove("tiny", 1.0)  # the new layout is what a removal unloads
        assert not _fake(reg, "n2").shards
        await reg.stop()
        await reg.close()

    asyncio.run(scenario())


def test_a_faster_node_joining_takes_the_model_over_under_load(tmp_path: Path) -> None:
    async def scenario() -> None:
        reg = _registry(tmp_path, nodes=("n1",))
        _fake(reg, "n1").speed = 0.25
        await _polled(reg)
        await reg.add(ModelRequest(ModelConfig("tiny", "tiny")))
        assert [r.node_id for r in reg.engines["tiny"].pipeline.replicas] == ["n1"]
        reqs, events = await _running(reg, 4)
        assert reg.register_node(NodeConfig("n9", "127.0.0.1:47399")) is not None
        await reg.membership.poll(reg.membership.status["n9"])
        await asyncio.gather(*(t for t in asyncio.all_tasks() if t.get_name() == "profile-n9"))
        await asyncio.gather(*(t for t in asyncio.all_tasks() if t.get_name() == "rebalance-tiny"))
        new = reg.engines["tiny"]
        assert [r.node_id for r in new.pipeline.replicas] == ["n9"] and new.generation == 2
        _unchanged(reqs, await asyncio.gather(*events))
        assert not _fake(reg, "n1").shards and set(_fake(reg, "n9").shards) == {"tiny/g2"}
        assert any("re-placed tiny (node n9 joined)" in e for e in reg.membership.status["n9"].events)
        await reg.stop()
        await reg.close()

    asyncio.run(scenario())


def test_an_explicit_rebalance_that_gains_nothing_changes_nothing(tmp_path: Path) -> None:
    async def scenario() -> None:
        reg = _registry(tmp_path)
        _fake(reg, "n2").speed = 0.5
        await _polled(reg)
        await reg.add(ModelRequest(ModelConfig("tiny", "tiny")))
        before = reg.engines["tiny"]
        outcome = await reg.rebalancer.rebalance("tiny", "asked")
        assert not outcome.changed and "already on the plan" in outcome.reason and reg.engines["tiny"] is before
        with pytest.raises(RegistryError) as unknown:
            await reg.rebalancer.rebalance("nope", "asked")
        assert unknown.value.code == grpc.StatusCode.NOT_FOUND
        # explicit nodes: moved only when asked, and only when the plan is faster by EXPLICIT_GAIN
        await reg.add(ModelRequest(ModelConfig("pinned", "tiny", stages=(("n1",), ("n2",)))))
        outcome = await reg.rebalancer.rebalance("pinned", "asked")
        assert outcome.changed and [r.node_id for r in reg.engines["pinned"].pipeline.replicas] == ["n1"]
        assert outcome.after_tps is not None and outcome.before_tps is not None
        assert outcome.after_tps > outcome.before_tps
        await reg.stop()
        await reg.close()

    asyncio.run(scenario())


@pytest.mark.parametrize("auto", [True, False])
def test_a_slow_stage_moves_the_model_only_with_auto_rebalance(tmp_path: Path, auto: bool) -> None:
    async def scenario() -> None:
        reg = _registry(tmp_path)
        reg.config = dataclasses.replace(reg.config, coordinator=dataclasses.replace(reg.config.coordinator,
                                                                                     auto_rebalance=auto))
        await _polled(reg)
        await reg.add(ModelRequest(ModelConfig("tiny", "tiny")))
        [first] = [r.node_id for r in reg.engines["tiny"].pipeline.replicas]
        other = "n2" if first == "n1" else "n1"
        _fake(reg, first).speed = 1 / (2 * AUTO_GAIN)  # slower now than its profile says
        reqs, events = await _running(reg, 3)
        reg.rebalancer.on_slow("tiny", first)
        await asyncio.gather(*(t for t in asyncio.all_tasks() if t.get_name() == "rebalance-tiny"))
        _unchanged(reqs, await asyncio.gather(*events))
        on = [r.node_id for r in reg.engines["tiny"].pipeline.replicas]
        assert on == ([other] if auto else [first])
        await reg.stop()
        await reg.close()

    asyncio.run(scenario())


def test_requests_sent_or_cancelled_while_the_old_layout_freezes(tmp_path: Path) -> None:
    async def scenario() -> None:
        reg = _registry(tmp_path)
        await _polled(reg)
        await reg.add(ModelRequest(ModelConfig("tiny", "tiny", expected_concurrency=8)))
        old = reg.engines["tiny"]
        reqs, events = await _running(reg, 3)
        gate = _fake(reg, "n2").hold_next = asyncio.Event()
        move = asyncio.create_task(reg.remove_node("n1", drain=True))
        for _ in range(200):
            await asyncio.sleep(0)
        assert old.frozen and not move.done()
        waiting = request("queued", [4, 4, 4], 6)
        old.submit(waiting)  # frozen: it waits, and moves with the rest
        old.cancel(reqs[0])  # running, its micro-batch in flight: it ends at the move, not moved
        gate.set()
        await move
        first, *rest = await asyncio.gather(*events)
        assert first[-1].finish_reason == "cancelled"
        _unchanged(reqs[1:], rest)
        assert tokens_of(await events_of(waiting)) == expected_tokens([4, 4, 4], 6)
        assert not old.scheduler.running and not old.scheduler.waiting
        await reg.stop()
        await reg.close()

    asyncio.run(scenario())


def test_a_model_of_the_config_moves_from_the_cache_folder_of_its_name(tmp_path: Path) -> None:
    """A config model's source names where it was prepared from; what the nodes load is the cache folder named
    after the model, before and after a move."""
    async def scenario() -> None:
        reg = _registry(tmp_path)
        raw = {"model_name": "tiny", "model_cache_dir": str(tmp_path), "nodes": [
            {"id": n.id, "address": n.address, "memory_mb": n.memory_mb} for n in reg.config.nodes],
            "models": [{"name": "tiny", "source": str(tmp_path / "elsewhere"), "nodes": ["n1", "n2"]}]}
        reg.config = parse_config(raw)
        await _polled(reg)
        await reg.start()
        old = reg.engines["tiny"]
        reqs, events = await _running(reg, 2)
        outcome = await reg.rebalancer.rebalance("tiny", "asked", min_gain=None)  # forced: whenever the plan differs
        assert outcome.changed, outcome.reason
        new = reg.engines["tiny"]
        assert new.meta.path == old.meta.path == tmp_path / "tiny"
        assert {load.model_path for n in ("n1", "n2") for load in _fake(reg, n).loads} == {str(tmp_path / "tiny")}
        _unchanged(reqs, await asyncio.gather(*events))
        await reg.stop()
        await reg.close()

    asyncio.run(scenario())


def test_a_caller_that_goes_away_mid_move_does_not_stop_it(tmp_path: Path) -> None:
    """The client of POST .../rebalance hangs up while the old layout is frozen: the move still completes (else the
    model would stay frozen)."""
    async def scenario() -> None:
        reg = _registry(tmp_path)
        await _polled(reg)
        await reg.add(ModelRequest(ModelConfig("tiny", "tiny", expected_concurrency=8)))
        old = reg.engines["tiny"]
        reqs, events = await _running(reg, 2)
        gate = _fake(reg, "n2").hold_next = asyncio.Event()
        away = frozenset({"n1"})
        caller = asyncio.create_task(reg.rebalancer.rebalance("tiny", "asked", min_gain=None, exclude=away))
        for _ in range(200):
            await asyncio.sleep(0)
        assert old.frozen
        caller.cancel()
        gate.set()
        await reg.rebalancer.settled("tiny")
        assert caller.cancelled() and reg.engines["tiny"] is not old
        _unchanged(reqs, await asyncio.gather(*events))
        await reg.stop()
        await reg.close()

    asyncio.run(scenario())
