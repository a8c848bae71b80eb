"""The registry's add/remove orchestration with fake engines (no nodes, no RPCs): a DELETE during a model's
placement or load wins (the model does not come back, the load is cancelled, no task is left), and nodes are
registered once under any spelling of their address and removed only when no model uses them."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import grpc
import pytest

from coordinator import registry as registry_module
from coordinator.placement import Placement
from coordinator.registry import ModelRegistry, ModelRequest, RegistryError
from protos.config import ModelConfig, NodeConfig, parse_config
from protos.data_structures import LayerRange

DEADLINE_S = 60.0  # only so that a regression fails instead of hanging; nothing here waits on time


@dataclass
class FakeClient:
    node_id: str = "n"
    unloads: int = 0

    def close_stream(self, model: str) -> None:
        pass

    async def info(self) -> Any:
        return type("Info", (), {"rss_bytes": 0})()

    async def unload(self, model: str) -> None:
        self.unloads += 1


@dataclass
class FakeReplica:
    node_id: str
    client: FakeClient = field(default_factory=FakeClient)


@dataclass
class FakePipeline:
    replicas: list[FakeReplica]
    model: str = "race"  # the shards' name on the nodes

    def replica_on(self, node_id: str) -> FakeReplica | None:
        return next((r for r in self.replicas if r.node_id == node_id), None)


@dataclass
class FakeScheduler:
    running: list[Any] = field(default_factory=list)
    waiting: list[Any] = field(default_factory=list)
    has_work: bool = False


@dataclass
class FakeEngine:
    name: str
    pipeline: FakePipeline
    scheduler: FakeScheduler = field(default_factory=FakeScheduler)
    draining: bool = False
    loaded: bool = False
    ready: bool = False
    stopped: bool = False
    replicas: Any = field(default_factory=lambda: SimpleNamespace(  # not judged for speed, never loading
        model_load=None, loading_on=lambda node_id: False))
    config: Any = None  # not known: it cannot be re-placed

    async def stop(self, why: str = "") -> None:
        self.stopped = True

    def start_draining(self) -> None:
        self.draining = True

    def on_node_event(self, event: Any) -> None:
        pass

    def use_draft_model(self, served: Any) -> None:
        pass


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """build_engine makes a FakeEngine; load_engine waits until the test lets it finish (or is cancelled)."""
    state: dict[str, Any] = {"loads_started": [], "loads_cancelled": [], "finish_loads": None}

    def build_engine(config: Any, m: ModelConfig, clients: Any, model_dir: Any = None) -> FakeEngine:
        return FakeEngine(m.name, FakePipeline([FakeReplica(n) for n in m.nodes]))

    async def load_engine(m: ModelConfig, engine: FakeEngine) -> None:
        state["loads_started"].append(m.name)
        try:
            await state["finish_loads"].wait()
        except asyncio.CancelledError:
            state["loads_cancelled"].append(m.name)
            raise
        engine.loaded = engine.ready = True

    monkeypatch.setattr(registry_module, "build_engine", build_engine)
    monkeypatch.setattr(registry_module, "load_engine", load_engine)
    monkeypatch.setattr(registry_module, "read_model_meta", lambda *a, **k: None)
    yield state


def make_registry(node_ids: tuple[str, ...] = ("n1", "n2")) -> ModelRegistry:
    config = parse_config({"model_name": "m0", "nodes": [{"id": n, "address": f"127.0.0.1:{47100 + i}"}
                                                         for i, n in enumerate(node_ids)]})
    return ModelRegistry(config)


async def _until(predicate: Any) -> None:
    while not predicate():
        await asyncio.sleep(0)


def _leftover_tasks() -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t is not asyncio.current_task() and not t.done()]


def test_delete_during_an_explicit_load_wins(fakes: dict[str, Any]) -> None:
    async def scenario() -> None:
        fakes["finish_loads"] = asyncio.Event()  # never set: the load only ends by cancellation
        reg = make_registry()
        add = asyncio.create_task(reg.add(ModelRequest(ModelConfig("race", "src", stages=(("n1",),)))))
        await asyncio.wait_for(_until(lambda: fakes["loads_started"]), DEADLINE_S)
        assert reg.state("race") == "loading"
        engine = reg.engines["race"]
        await asyncio.wait_for(reg.remove("race", 1.0), DEADLINE_S)
        with pytest.raises(RegistryError) as refused:
            await asyncio.wait_for(add, DEADLINE_S)
        assert refused.value.code == grpc.StatusCode.ABORTED
        assert "removed while it was being added" in str(refused.value)
        assert fakes["loads_cancelled"] == ["race"]
        assert engine.stopped and engine.pipeline.replicas[0].client.unloads == 1  # what it loaded is unloaded
        assert "race" not in reg.engines and "race" not in reg.pending
        await asyncio.sleep(0)  # done callbacks run
        assert not reg._loads and not _leftover_tasks()
        await reg.membership.stop()

    asyncio.run(scenario())


def test_delete_during_placement_wins(fakes: dict[str, Any]) -> None:
    async def scenario() -> None:
        fakes["finish_loads"] = asyncio.Event()
        fakes["finish_loads"].set()
        reg = make_registry()
        placing, proceed = asyncio.Event(), asyncio.Event()

        async def slow_place(request: ModelRequest) -> Placement:
            placing.set()
            await proceed.wait()
            return Placement(stages=(("n1",),), ranges=(LayerRange(0, 1),))

        reg._place = slow_place  # type: ignore[method-assign]
        add = asyncio.create_task(reg.add(ModelRequest(ModelConfig("race", "src"))))
        await asyncio.wait_for(placing.wait(), DEADLINE_S)
        assert reg.state("race") == "pending"
        assert await reg.remove("race", 1.0) == {}
        proceed.set()
        with pytest.raises(RegistryError) as refused:
            await asyncio.wait_for(add, DEADLINE_S)
        assert refused.value.code == grpc.StatusCode.ABORTED
        assert fakes["loads_started"] == []  # never loaded
        assert "race" not in reg.engines and "race" not in reg.pending
        assert not _leftover_tasks()
        await reg.membership.stop()

    asyncio.run(scenario())


def test_a_load_that_finishes_is_served(fakes: dict[str, Any]) -> None:
    async def scenario() -> None:
        fakes["finish_loads"] = asyncio.Event()
        fakes["finish_loads"].set()
        reg = make_registry()
        assert await reg.add(ModelRequest(ModelConfig("ok", "src", stages=(("n1",),)))) == "serving"
        await asyncio.sleep(0)
        assert not reg._loads
        await reg.membership.stop()

    asyncio.run(scenario())


@pytest.mark.parametrize("alias", ["127.0.0.1:047100", "LOCALHOST:47100", "127.1:47100", "[::ffff:127.0.0.1]:47100",
                                   "[::1]:47100", "0x7f.0.0.1:47100"])
def test_an_alias_of_a_known_address_is_refused(alias: str) -> None:
    async def scenario() -> None:
        reg = make_registry()
        with pytest.raises(RegistryError) as refused:
            reg.register_node(NodeConfig("evil", alias))
        assert refused.value.code == grpc.StatusCode.ALREADY_EXISTS
        assert "'n1'" in str(refused.value)  # names the node it aliases
        assert "evil" not in reg.nodes and "evil" not in reg.membership.status
        await reg.membership.stop()

    asyncio.run(scenario())


def test_nodes_are_stored_canonical_and_known_ids_keep_their_address() -> None:
    async def scenario() -> None:
        reg = make_registry()
        added = reg.register_node(NodeConfig("n3", "Node-3.Example:050053"))
        assert added is not None and added.address == "node-3.example:50053"
        assert reg.register_node(NodeConfig("n3", "NODE-3.example:50053")) is None  # the same, known
        with pytest.raises(RegistryError) as refused:
            reg.register_node(NodeConfig("n1", "10.0.0.9:47100"))  # a known id at another address
        assert refused.value.code == grpc.StatusCode.ALREADY_EXISTS and "127.0.0.1:47100" in str(refused.value)
        with pytest.raises(RegistryError) as bad:
            reg.register_node(NodeConfig("n4", "::1:5"))
        assert bad.value.code == grpc.StatusCode.INVALID_ARGUMENT and "brackets" in str(bad.value)
        await reg.membership.stop()

    asyncio.run(scenario())


def test_remove_node(fakes: dict[str, Any]) -> None:
    async def scenario() -> None:
        fakes["finish_loads"] = asyncio.Event()
        fakes["finish_loads"].set()
        reg = make_registry(("n1", "n2", "n3"))
        reg.membership.start()  # pollers run (against nothing: they fail and retry)
        await reg.add(ModelRequest(ModelConfig("used", "src", stages=(("n1", "n2"),))))
        with pytest.raises(RegistryError) as refused:
            await reg.remove_node("n1")  # even with another replica (n2): models are moved or removed first
        assert refused.value.code == grpc.StatusCode.FAILED_PRECONDITION and "['used']" in str(refused.value)
        with pytest.raises(RegistryError) as cannot:
            await reg.remove_node("n1", drain=True)  # it cannot move (its configuration is not known here)
        assert cannot.value.code == grpc.StatusCode.FAILED_PRECONDITION and "cannot move off it" in str(cannot.value)
        with pytest.raises(RegistryError) as unknown:
            await reg.remove_node("nope")
        assert unknown.value.code == grpc.StatusCode.NOT_FOUND
        poller = reg.membership._tasks["n3"]
        removed = await reg.remove_node("n3")
        assert removed.address == "127.0.0.1:47102"
        assert "n3" not in reg.nodes and "n3" not in reg.membership.status and poller.done()
        assert reg.register_node(NodeConfig("n4", "localhost:47102")) is not None  # its address is free again
        await reg.membership.stop()

    asyncio.run(scenario())
