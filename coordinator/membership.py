"""Cluster membership: polls every node's gRPC health service and Info, and tells the engines.

States of a node: ``loading`` (a shard is being loaded), ``ready``, ``draining`` (its health service
says NOT_SERVING: it is shutting down and takes no new sequences), ``down`` (``health_failures``
consecutive polls failed, or its stream broke). A node that answers again is checked for its shards:
the engines load a missing shard again by themselves, so a restarted node serves with nothing else
restarted.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from coordinator.engine import ModelEngine
from protos import security, shard_pb2, shard_pb2_grpc
from protos.config import CoordinatorConfig, NodeConfig
from protos.runtime import GRPC_OPTIONS

logger = logging.getLogger(__name__)


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
    def __init__(self, nodes: list[NodeConfig], engines: Callable[[], list[ModelEngine]],
                 config: CoordinatorConfig) -> None:
        self.config = config
        self.engines = engines  # the current engines (models come and go)
        self.status: dict[str, NodeStatus] = {}
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}  # one poller per node: a hung node delays no other
        self._started = False
        for node in nodes:
            self.add_node(node)

    def add_node(self, node: NodeConfig) -> NodeStatus:
        if node.id not in self.status:
            self.status[node.id] = NodeStatus(node)
            self._channels[node.id] = security.aio_channel(node.address, GRPC_OPTIONS)
            if self._started:
                self._watch(node.id)
        return self.status[node.id]

    async def remove_node(self, node_id: str) -> None:
        """Stops polling a node and forgets it (its row in /api/cluster and its state gauges go with it)."""
        task = self._tasks.pop(node_id, None)
        self.status.pop(node_id, None)
        channel = self._channels.pop(node_id, None)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if channel is not None:
            await channel.close()

    def channel(self, node_id: str) -> grpc.aio.Channel:
        return self._channels[node_id]

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
        replicas = [e.pipeline.replica_on(node_id) for e in self.engines()]
        if any(r is not None and r.state == "loading" for r in replicas):
            return "loading"
        if st.health == "unknown":
            return "loading"
        return "ready"

    def start(self) -> None:
        self._started = True
        for node_id in self.status:
            self._watch(node_id)

    async def stop(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        for channel in self._channels.values():
            await channel.close()

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
        channel = self._channels[st.node.id]
        timeout = self.config.health_timeout_s
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout)
            serving = reply.status == health_pb2.HealthCheckResponse.SERVING
            info = await shard_pb2_grpc.ShardNodeStub(channel).Info(shard_pb2.InfoRequest(), timeout=timeout) \
                if serving else None
        except grpc.aio.AioRpcError as e:
            self._failed(st, f"health check failed: {e.code().name}: {e.details()}")
            return
        was_down = st.health == "unreachable"
        st.failures, st.last_seen, st.last_error = 0, time.time(), ""
        if not serving:
            if st.health != "not_serving":
                self._event(st, "draining (health: NOT_SERVING)")
            st.health = "not_serving"
            for engine in self.engines():
                engine.node_draining(st.node.id)
            return
        if was_down or st.health != "serving":
            self._event(st, "up" + (f" after {time.time() - st.down_since:.1f} s down" if st.down_since else ""))
            st.down_since = None
        st.health, st.info = "serving", info
        for engine in self.engines():
            engine.node_up(st.node.id, info)

    def _failed(self, st: NodeStatus, why: str) -> None:
        st.failures += 1
        st.last_error = why
        if st.failures < self.config.health_failures:
            return
        st.health = "unreachable"
        if st.down_since is None:
            st.down_since = time.time()
            self._event(st, f"down: {why}")
        for engine in self.engines():
            engine.node_down(st.node.id, f"node down: {why}")

    def _event(self, st: NodeStatus, what: str) -> None:
        level = logging.INFO if what.startswith("up") else logging.WARNING
        logger.log(level, "node %s (%s) %s", st.node.id, st.node.address, what)
        st.events = [*st.events[-19:], f"{time.strftime('%H:%M:%S')} {what}"]
