"""The replica state machine (ReplicaSet) over fake nodes: node events move replicas between ready, draining, down
and loading; a node that answers without its shard gets it loaded again; the scheduler always knows the lanes."""

from __future__ import annotations

import asyncio

from coordinator.membership import NodeEvent
from coordinator.replicas import ReplicaSet
from tests.unit.coordinator.builders import make_engine, node, request


async def _info(clients, node_id):  # type: ignore[no-untyped-def]
    return await node(clients, node_id).info()


def test_lanes_spread_over_replicas_and_reach_the_scheduler() -> None:
    engine, _ = make_engine([["n1"], ["n2", "n3"]], depth=1)
    assert engine.depth == 2  # at least one lane per replica of the most replicated range
    assert engine.scheduler.lane_routes == [("n1", "n2"), ("n1", "n3")]
    assert engine.scheduler.usable == {0, 1}
    assert engine.scheduler.node_capacity == {"n1": 1000, "n2": 1000, "n3": 1000}


def test_down_then_up_with_the_shard_is_ready_again() -> None:
    async def scenario() -> None:
        engine, clients = make_engine([["n1"], ["n2", "n3"]])
        replicas: ReplicaSet = engine.replicas
        engine.on_node_event(NodeEvent("n2", "down", why="node down: unreachable"))
        n2 = engine.pipeline.replica_on("n2")
        assert n2.state == "down" and "unreachable" in n2.last_error
        assert engine.scheduler.usable == {1} and engine.ready  # n3 still serves that range
        replicas.reroute_idle_lanes(set())
        assert engine.scheduler.lane_routes == [("n1", "n3"), ("n1", "n3")]
        engine.on_node_event(NodeEvent("n2", "up", info=await _info(clients, "n2")))
        assert n2.state == "ready" and n2.last_error == ""
        replicas.reroute_idle_lanes(set())
        assert engine.scheduler.lane_routes == [("n1", "n2"), ("n1", "n3")] and engine.scheduler.usable == {0, 1}

    asyncio.run(scenario())


def test_draining_takes_no_new_sequences() -> None:
    engine, _ = make_engine([["n1"], ["n2"]])
    engine.on_node_event(NodeEvent("n2", "draining"))
    assert engine.pipeline.replica_on("n2").state == "draining"
    assert engine.scheduler.usable == set() and not engine.ready
    assert "n2" in engine.unavailable_reason() and "draining" in engine.unavailable_reason()


def test_a_node_that_lost_its_shard_gets_it_loaded_again() -> None:
    async def scenario() -> None:
        engine, clients = make_engine([["n1"], ["n2"]])
        n2 = node(clients, "n2")
        n2.shards.clear()  # restarted between two polls
        engine.on_node_event(NodeEvent("n2", "up", info=await n2.info()))
        replica = engine.pipeline.replica_on("n2")
        assert replica.state == "loading" and engine.replicas.loading_on("n2")
        while engine.replicas.reloading:  # the reload task runs (no clock)
            await asyncio.sleep(0)
        assert replica.state == "ready" and "m" in n2.shards
        assert n2.loads[-1].layers == replica.layers and not n2.loads[-1].dry_run
        assert n2.loads[-1].model_path == "/models/m"

    asyncio.run(scenario())


def test_a_failed_load_is_down_and_not_retried_at_once() -> None:
    async def scenario() -> None:
        engine, clients = make_engine([["n1"], ["n2"]])
        n2 = node(clients, "n2")
        replica = engine.pipeline.replica_on("n2")
        n2.reachable = False
        await engine.replicas.load(replica)
        assert replica.state == "down" and "could not load its shard: UNAVAILABLE" in replica.last_error
        n2.reachable, loads = True, len(n2.loads)
        n2.shards.clear()
        engine.on_node_event(NodeEvent("n2", "up", info=await n2.info()))
        assert len(n2.loads) == loads and not engine.replicas.reloading  # RELOAD_RETRY_S not yet passed

    asyncio.run(scenario())


def test_up_events_reload_nothing_before_the_first_load_or_while_draining() -> None:
    async def scenario() -> None:
        for loaded, draining in ((False, False), (True, True)):
            engine, clients = make_engine([["n1"]], loaded=loaded)
            if draining:
                engine.start_draining()
            node(clients, "n1").shards.clear()
            engine.on_node_event(NodeEvent("n1", "up", info=await node(clients, "n1").info()))
            assert not engine.replicas.reloading

    asyncio.run(scenario())


def test_a_lost_replica_marks_only_the_lanes_with_sequences_through_it() -> None:
    async def scenario() -> None:
        engine, _ = make_engine([["n1"], ["n2", "n3"]])
        r = request("a")
        engine.submit(r)
        await engine.tick()  # admitted to lane 0 (n1/n2) and its micro-batch issued
        assert r.lane == 0
        engine.on_node_event(NodeEvent("n2", "down", why="gone"))
        assert engine.replicas.lost_lanes == {0}
        assert engine.replicas.take_lost_lanes(busy={0}) == []  # waits for its micro-batch
        assert engine.replicas.take_lost_lanes(busy=set()) == [0] and not engine.replicas.lost_lanes
        await engine.stop()

    asyncio.run(scenario())
