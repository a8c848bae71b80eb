"""Cluster membership: polls every node's gRPC health service and Info, and publishes node events.

States of a node: ``loading`` (a shard is being loaded), ``ready``, ``draining`` (its health service
says NOT_SERVING: it is shutting down and takes no new sequences), ``down`` (``health_failures``
consecutive polls failed, or its stream broke). Each change is published as a ``NodeEvent`` to the
subscribers (the registry hands them to the engines); every healthy poll publishes ``up`` with the node's
Info, so an engine loads a missing shard again by itself and a restarted node serves with nothing else
restarted.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import grpc

from coordinator.node_client import NodeClients
from protos import shard_pb2
from protos.config import CoordinatorConfig, NodeConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class NodeEvent:
    """What a poll found: ``up`` (with its Info), ``draining`` (NOT_SERVING) or ``down`` (with why)."""

    node_id: str
    kind: Literal["up", "draining", "down"]
    info: shard_pb2.NodeInfo | None = None
    why: str = ""


NodeListener = Callable[[NodeEvent], None]


@dataclass
class NodeStatus:
    node: NodeConfig
    health: str = "unknown"  # unknown | serving | not_serving | unreachable
    failures: int = 0  # consecutive failed polls
    last_error: str = ""
    last_seen: float | None = None  # time.time() of the last good poll
    info: shard_pb2.NodeInfo | None = None
    down_since: float | None = None
    events: list[str] = field(default_factory=list)  # recent state changes, newest last


class Membership:
    def __init__(self, clients: NodeClients, config: CoordinatorConfig,
                 loading: Callable[[str], bool] = lambda node_id: False) -> None:
        self.config = config
        self.clients = clients  # the registry's: one per node, shared with the pipelines
        self.loading = loading  # a shard is being loaded on that node
        self.status: dict[str, NodeStatus] = {}
        self._listeners: list[NodeListener] = []
        self._tasks: dict[str, asyncio.Task[None]] = {}  # one poller per node: a hung node delays no other
        self._started = False
        for node_id in clients:
            self.add_node(clients[node_id].node)

    def subscribe(self, listener: NodeListener) -> None:
        self._listeners.append(listener)

    def _publish(self, event: NodeEvent) -> None:
        for listener in self._listeners:
            listener(event)

    def add_node(self, node: NodeConfig) -> NodeStatus:
        if node.id not in self.status:
            self.status[node.id] = NodeStatus(node)
            self.clients.add(node)
            if self._started:
                self._watch(node.id)
        return self.status[node.id]

    async def remove_node(self, node_id: str) -> None:
        """Stops polling a node and forgets it (its row in /api/cluster and its state gauges go with it)."""
        task = self._tasks.pop(node_id, None)
        self.status.pop(node_id, None)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    def _watch(self, node_id: str) -> None:
        self._tasks[node_id] = asyncio.get_running_loop().create_task(self._run(self.status[node_id]),
                                                                      name=f"health-{node_id}")

    def state(self, node_id: str) -> str:
        """The node's state as users see it."""
        st = self.status[node_id]
        if st.health == "unreachable":
            return "down"
        if st.health == "not_serving":
            return "draining"
        if self.loading(node_id) or st.health == "unknown":
            return "loading"
        return "ready"

    def start(self) -> None:
        self._started = True
        for node_id in self.status:
            self._watch(node_id)

    async def stop(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _run(self, st: NodeStatus) -> None:
        while True:
            started = time.monotonic()
            try:
                await self.poll(st)
            except asyncio.CancelledError:
                raise
            except Exception:  # a poller must survive anything a node answers
                logger.exception("health poll of %s failed unexpectedly", st.node.id)
            await asyncio.sleep(max(0.05, self.config.health_interval_s - (time.monotonic() - started)))

    async def poll(self, st: NodeStatus) -> None:
        client = self.clients[st.node.id]
        try:
            serving = await client.check_health()
            info = await client.info(client.deadlines.health_s) if serving else None
        except grpc.aio.AioRpcError as e:
            self._failed(st, f"health check failed: {e.code().name}: {e.details()}")
            return
        was_down = st.health == "unreachable"
        st.failures, st.last_seen, st.last_error = 0, time.time(), ""
        if not serving:
            if st.health != "not_serving":
                self._event(st, "draining (health: NOT_SERVING)")
            st.health = "not_serving"
            self._publish(NodeEvent(st.node.id, "draining"))
            return
        if was_down or st.health != "serving":
            self._event(st, "up" + (f" after {time.time() - st.down_since:.1f} s down" if st.down_since else ""))
            st.down_since = None
        st.health, st.info = "serving", info
        self._publish(NodeEvent(st.node.id, "up", info=info))

    def _failed(self, st: NodeStatus, why: str) -> None:
        st.failures += 1
        st.last_error = why
        if st.failures < self.config.health_failures:
            return
        st.health = "unreachable"
        if st.down_since is None:
            st.down_since = time.time()
            self._event(st, f"down: {why}")
        self._publish(NodeEvent(st.node.id, "down", why=f"node down: {why}"))

    def note(self, node_id: str, what: str) -> None:
        """An event of a node from elsewhere (a spare taking a range over): in its events in /api/cluster."""
        st = self.status.get(node_id)
        if st is not None:
            self._event(st, what)

    def _event(self, st: NodeStatus, what: str) -> None:
        level = logging.INFO if what.startswith("up") else logging.WARNING
        logger.log(level, "node %s (%s) %s", st.node.id, st.node.address, what)
        st.events = [*st.events[-19:], f"{time.strftime('%H:%M:%S')} {what}"]
