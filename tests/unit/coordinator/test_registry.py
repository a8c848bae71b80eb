"""ModelRegistry with fake node clients (no processes): a model added without nodes is measured by dry-run loads and
the nodes' speed profiles and placed on the ready nodes for speed, loaded and served; removing it unloads every
shard; a model that does not fit stays pending with the reason; dead replicas move to spare nodes (live
re-placement: test_rebalance.py)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import grpc
import pytest

from coordinator.node_client import Deadlines, NodeClients
from coordinator.plan_preview import preview
from coordinator.registry import ModelRegistry, ModelRequest, RegistryError
from protos.config import ModelConfig, NodeConfig, parse_config
from tests.unit.fakes import FakeNetwork, FakeNodeClient

NUM_LAYERS = 4


def _registry(tmp_path: Path, layer_bytes: int = 1000, memory_mb: int = 1, nodes: tuple[str, ...] = ("n1", "n2")
              ) -> ModelRegistry:
    folder = tmp_path / "tiny"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "model_type": "llama", "num_hidden_layers": NUM_LAYERS, "max_position_embeddings": 256, "vocab_size": 1000,
        "hidden_size": 8, "intermediate_size": 16}))
    config = parse_config({"model_name": "tiny", "model_cache_dir": str(tmp_path), "nodes": [
        {"id": n, "address": f"127.0.0.1:{47300 + i}", "memory_mb": memory_mb} for i, n in enumerate(nodes)]})

    network = FakeNetwork()  # stage-to-stage hand-offs between the fake nodes

    def make(node: NodeConfig, deadlines: Deadlines) -> FakeNodeClient:
        return FakeNodeClient(node, deadlines, NUM_LAYERS, layer_bytes=layer_bytes, network=network)

    return ModelRegistry(config, NodeClients(Deadlines(), make=make))


async def _polled(reg: ModelRegistry) -> None:
    for st in reg.membership.status.values():
        await reg.membership.poll(st)


def _fake(reg: ModelRegistry, node_id: str) -> FakeNodeClient:
    client = reg.clients[node_id]
    assert isinstance(client, FakeNodeClient)
    return client


def test_add_places_on_the_ready_nodes_and_remove_unloads(tmp_path: Path) -> None:
    async def scenario() -> None:
        reg = _registry(tmp_path)
        await _polled(reg)
        # at 8 streams two stages pipeline (the fakes are compute-bound: their steps cost in proportion to the rows)
        assert await reg.add(ModelRequest(ModelConfig("tiny", "tiny", expected_concurrency=8))) == "serving"
        assert _fake(reg, "n1").profiles and _fake(reg, "n2").profiles  # profiled for its format
        dry = [load for load in _fake(reg, "n1").loads if load.dry_run]
        assert dry and all(load.model_path == str(tmp_path / "tiny") for load in dry)  # measured on a ready node
        held = {n: _fake(reg, n).shards["tiny"].layers for n in ("n1", "n2")}
        assert held["n1"].start == 0 and held["n1"].end == held["n2"].start and held["n2"].end == NUM_LAYERS
        engine = reg.engines["tiny"]
        assert engine.ready and [r.node_id for r in engine.pipeline.replicas] == ["n1", "n2"]
        freed = await reg.remove("tiny", 1.0)
        assert set(freed) == {"n1", "n2"} and "tiny" not in reg.engines
        assert all(not _fake(reg, n).shards and _fake(reg, n).unloaded == ["tiny"] for n in ("n1", "n2"))
        await reg.remove_node("n1")  # nothing on it now
        assert "n1" not in reg.nodes and "n1" not in reg.clients
        await reg.stop()
        await reg.close()

    asyncio.run(scenario())


def test_one_stream_is_served_by_the_fastest_node_alone_and_a_preview_says_why(tmp_path: Path) -> None:
    async def scenario() -> None:
        reg = _registry(tmp_path)
        _fake(reg, "n1").speed = 0.1  # n1 is ten times slower than n2
        await _polled(reg)
        shown = await preview(reg, ModelRequest(ModelConfig("tiny", "tiny")))
        assert shown.method == "speed" and [s.node_id for s in shown.plan.stages] == ["n2"]
        assert [x.node_id for x in shown.left_out] == ["n1"] and "ms per token" in shown.left_out[0].reason
        assert shown.plan.single_stream_tps > 1.3 * shown.capacity_split.single_stream_tps
        assert [s.node_id for s in shown.capacity_split.stages] == ["n1", "n2"]
        assert not _fake(reg, "n1").shards and not _fake(reg, "n2").shards  # nothing loaded by a preview
        assert await reg.add(ModelRequest(ModelConfig("tiny", "tiny"))) == "serving"
        assert [r.node_id for r in reg.engines["tiny"].pipeline.replicas] == ["n2"]
        assert len(_fake(reg, "n2").profiles) == 1  # measured once per node and format
        await reg.stop()
        await reg.close()

    asyncio.run(scenario())


def test_a_model_that_does_not_fit_stays_pending_with_the_reason(tmp_path: Path) -> None:
    async def scenario() -> None:
        reg = _registry(tmp_path, layer_bytes=2 * 2**20)  # a layer is larger than any node's 1 MiB budget
        await _polled(reg)
        assert await reg.add(ModelRequest(ModelConfig("tiny", "tiny"))) == "pending"
        assert "room for at least one layer" in reg.pending["tiny"].reason
        assert not _fake(reg, "n1").shards and not reg.engines
        assert await reg.remove("tiny", 1.0) == {} and not reg.pending
        await reg.close()

    asyncio.run(scenario())


def test_without_ready_nodes_a_model_waits(tmp_path: Path) -> None:
    async def scenario() -> None:
        reg = _registry(tmp_path)  # never polled: no node is ready yet
        assert await reg.add(ModelRequest(ModelConfig("tiny", "tiny"))) == "pending"
        assert reg.pending["tiny"].reason == "no node is ready"
        await reg.close()

    asyncio.run(scenario())


def test_add_refuses_unknown_models_and_nodes(tmp_path: Path) -> None:
    async def scenario() -> None:
        reg = _registry(tmp_path)
        with pytest.raises(RegistryError) as missing:
            await reg.add(ModelRequest(ModelConfig("x", "not-prepared")))
        assert missing.value.code == grpc.StatusCode.NOT_FOUND
        with pytest.raises(RegistryError) as unknown:
            await reg.add(ModelRequest(ModelConfig("tiny", "tiny", stages=(("n7",),))))
        assert unknown.value.code == grpc.StatusCode.INVALID_ARGUMENT and "n7" in str(unknown.value)
        await reg.close()

    asyncio.run(scenario())


def test_node_events_reach_the_engines(tmp_path: Path) -> None:
    async def scenario() -> None:
        reg = _registry(tmp_path)
        await _polled(reg)
        await reg.add(ModelRequest(ModelConfig("tiny", "tiny", stages=(("n1",), ("n2",)))))
        _fake(reg, "n2").serving = False
        await reg.membership.poll(reg.membership.status["n2"])
        assert reg.engines["tiny"].pipeline.replica_on("n2").state == "draining"
        assert reg.state("tiny") == "unavailable"
        await reg.stop()
        await reg.close()

    asyncio.run(scenario())


async def _down_for_a_while(reg: ModelRegistry, node_id: str) -> None:
    """The node stops answering: polled down, and down since long before the grace period."""
    _fake(reg, node_id).reachable = False
    st = reg.membership.status[node_id]
    for _ in range(reg.config.coordinator.health_failures):
        await reg.membership.poll(st)
    assert st.down_since is not None
    st.down_since -= reg.config.coordinator.replace_after_s + 1


async def _replacements_done() -> None:
    await asyncio.gather(*(t for t in asyncio.all_tasks() if t.get_name().startswith("replace-")))


def test_a_replica_down_past_the_grace_period_moves_to_a_spare_node(tmp_path: Path) -> None:
    async def scenario() -> None:
        reg = _registry(tmp_path, nodes=("n1", "n2", "spare"))
        await _polled(reg)
        await reg.add(ModelRequest(ModelConfig("tiny", "tiny", stages=(("n1",), ("n2",)))))
        engine = reg.engines["tiny"]
        layers = engine.pipeline.groups[1].layers
        _fake(reg, "n2").reachable = False
        await reg.membership.poll(reg.membership.status["n2"])
        await reg.membership.poll(reg.membership.status["n2"])
        reg.replacements.check()  # within the grace period: nothing moves, but requests wait for the spare
        assert engine.pipeline.replica_on("spare") is None and engine.ready and not engine.replicas.ready
        await _down_for_a_while(reg, "n2")
        reg.replacements.check()
        await _replacements_done()
        assert [r.node_id for r in engine.pipeline.groups[1].replicas] == ["spare"]
        assert engine.pipeline.replica_on("spare").state == "ready" and engine.replicas.ready
        assert _fake(reg, "spare").shards["tiny"].layers == layers
        assert any("took over layers" in e and "from n2" in e for e in reg.membership.status["spare"].events)
        assert any("replaced by spare" in e for e in reg.membership.status["n2"].events)
        _fake(reg, "n2").reachable = True  # it comes back still holding the shard: unloaded, it is a spare now
        await reg.membership.poll(reg.membership.status["n2"])
        await asyncio.gather(*(t for t in asyncio.all_tasks() if t is not asyncio.current_task()
                               and t.get_coro().__qualname__.endswith("_unload")))
        assert "tiny" not in _fake(reg, "n2").shards and engine.pipeline.replica_on("n2") is None
        await reg.stop()
        await reg.close()

    asyncio.run(scenario())


def test_without_a_spare_the_dead_range_stays_down_and_requests_fail(tmp_path: Path) -> None:
    async def scenario() -> None:
        reg = _registry(tmp_path)
        await _polled(reg)
        await reg.add(ModelRequest(ModelConfig("tiny", "tiny", stages=(("n1",), ("n2",)))))
        await _down_for_a_while(reg, "n2")
        reg.replacements.check()
        await _replacements_done()
        engine = reg.engines["tiny"]
        assert not engine.ready and not engine.replicas.awaiting_replacement
        assert engine.pipeline.replica_on("n2").state == "down"
        await reg.stop()
        await reg.close()

    asyncio.run(scenario())


def test_a_node_that_joins_is_profiled_for_the_served_models_once_it_is_ready(tmp_path: Path) -> None:
    async def scenario() -> None:
        reg = _registry(tmp_path)
        await _polled(reg)
        await reg.add(ModelRequest(ModelConfig("tiny", "tiny", stages=(("n1",), ("n2",)))))
        assert reg.register_node(NodeConfig("n9", "127.0.0.1:47399")) is not None
        await asyncio.sleep(0)
        assert _fake(reg, "n9").profiles == []  # not ready yet: nothing measured
        await reg.membership.poll(reg.membership.status["n9"])
        await asyncio.gather(*(t for t in asyncio.all_tasks() if t.get_name() == "profile-n9"))
        assert [p.model for p in _fake(reg, "n9").profiles] == ["tiny"]
        assert reg.profiles.of_node("n9", 0.0)[0].format == "tiny float32 none cpu"
        shown = await preview(reg, ModelRequest(ModelConfig("tiny2", "tiny")), remeasure=True)
        assert len(_fake(reg, "n9").profiles) == 2 and shown.nodes  # measured again on demand
        await reg.stop()
        await reg.close()

    asyncio.run(scenario())


def test_when_no_spare_has_room_the_requests_stop_waiting_for_one(tmp_path: Path) -> None:
    async def scenario() -> None:
        reg = _registry(tmp_path, nodes=("n1", "n2", "spare"))
        await _polled(reg)
        await reg.add(ModelRequest(ModelConfig("tiny", "tiny", stages=(("n1",), ("n2",)))))
        engine = reg.engines["tiny"]

        async def no_room(*args: object) -> None:
            return None

        reg.replacements._spare_with_room = no_room  # type: ignore[method-assign]
        await _down_for_a_while(reg, "n2")
        reg.replacements.check()
        assert engine.ready  # waiting for the takeover
        await _replacements_done()
        assert not engine.ready and not engine.replicas.awaiting_replacement  # none has room: they fail as before
        await reg.stop()
        await reg.close()

    asyncio.run(scenario())


def test_nodes_measure_their_links_and_a_plan_keeps_a_slow_or_broken_link_out_of_the_ring(tmp_path: Path) -> None:
    async def scenario() -> None:
        reg = _registry(tmp_path, nodes=("n1", "n2", "n3"))
        address = {n: reg.nodes[n].address for n in reg.nodes}
        _fake(reg, "n1").link_rtt[address["n2"]] = 0.5  # n1 -> n2 is slow, n2 -> n1 unreachable
        _fake(reg, "n2").link_rtt[address["n1"]] = None
        await _polled(reg)
        shown = await preview(reg, ModelRequest(ModelConfig("tiny", "tiny", expected_concurrency=8)))
        order = [s.node_id for s in shown.plan.stages]
        assert len(order) > 1 and all({a, b} != {"n1", "n2"} for a, b in zip(order, order[1:])), order
        assert sorted(_fake(reg, "n1").links_measured[0]) == sorted([address["n2"], address["n3"]])
        links = {p.node_id: p for p in reg.profiles.links_of("n1")}
        assert links["n2"].rtt_ms == 500.0 and links["n3"].rtt_ms == pytest.approx(0.1)
        [broken] = [p for p in reg.profiles.links_of("n2") if p.node_id == "n1"]
        assert broken.rtt_ms == -1 and broken.error == "unreachable"
        await preview(reg, ModelRequest(ModelConfig("tiny", "tiny")))
        assert len(_fake(reg, "n1").links_measured) == 1  # measured once, kept like the profiles
        await reg.stop()
        await reg.close()

    asyncio.run(scenario())
