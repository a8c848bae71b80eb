"""Membership over fake node clients, polled by hand (no pollers, no clock): it publishes ``up`` (with Info),
``draining`` and, after ``health_failures`` failed polls in a row, ``down`` with why; its node states."""

from __future__ import annotations

import asyncio

from coordinator.membership import Membership, NodeEvent
from protos.config import CoordinatorConfig, NodeConfig
from protos.data_structures import LayerRange
from tests.unit.coordinator.builders import node
from tests.unit.fakes import FakeShard, fake_clients


def _membership(failures: int = 3, loading: set[str] | None = None) -> tuple[Membership, list[NodeEvent]]:
    clients = fake_clients(("n1", "n2"))
    m = Membership(clients, CoordinatorConfig(health_failures=failures), lambda n: n in (loading or set()))
    events: list[NodeEvent] = []
    m.subscribe(events.append)
    return m, events


def test_a_healthy_poll_publishes_up_with_the_nodes_info() -> None:
    async def scenario() -> None:
        m, events = _membership()
        node(m.clients, "n1").shards["m"] = FakeShard(LayerRange(0, 2), 500)
        assert m.state("n1") == "loading"  # never polled yet
        await m.poll(m.status["n1"])
        [event] = events
        assert event.node_id == "n1" and event.kind == "up" and event.info is not None
        assert [s.model for s in event.info.shards] == ["m"]
        assert m.state("n1") == "ready" and m.status["n1"].info is event.info
        assert any("up" in e for e in m.status["n1"].events)

    asyncio.run(scenario())


def test_down_only_after_n_failed_polls_in_a_row() -> None:
    async def scenario() -> None:
        m, events = _membership(failures=3)
        st = m.status["n2"]
        await m.poll(st)
        node(m.clients, "n2").reachable = False
        await m.poll(st)
        await m.poll(st)
        assert [e.kind for e in events] == ["up"] and m.state("n2") == "ready" and st.failures == 2
        await m.poll(st)
        assert [e.kind for e in events] == ["up", "down"] and m.state("n2") == "down"
        assert "UNAVAILABLE" in events[-1].why and events[-1].why.startswith("node down")
        node(m.clients, "n2").reachable = True
        await m.poll(st)
        assert events[-1].kind == "up" and m.state("n2") == "ready" and st.failures == 0

    asyncio.run(scenario())


def test_not_serving_publishes_draining() -> None:
    async def scenario() -> None:
        m, events = _membership()
        node(m.clients, "n1").serving = False
        await m.poll(m.status["n1"])
        assert [(e.node_id, e.kind) for e in events] == [("n1", "draining")] and m.state("n1") == "draining"

    asyncio.run(scenario())


def test_loading_comes_from_the_callable() -> None:
    async def scenario() -> None:
        m, _ = _membership(loading={"n1"})
        for st in m.status.values():
            await m.poll(st)
        assert m.state("n1") == "loading" and m.state("n2") == "ready"

    asyncio.run(scenario())


def test_nodes_added_and_removed_share_the_pool() -> None:
    async def scenario() -> None:
        m, _ = _membership()
        m.add_node(NodeConfig("n9", "127.0.0.1:47299"))
        assert "n9" in m.clients and m.state("n9") == "loading"
        m.start()
        assert not m._tasks["n9"].done()
        await m.remove_node("n9")
        assert "n9" not in m.status
        await m.stop()
        assert all(t.done() for t in m._tasks.values())

    asyncio.run(scenario())
