"""The replica state machine of one model: which replicas can take work, the lanes' routes over them, and what
the scheduler must know of both.

States of a replica: ``loading`` -> ``ready`` (its node holds the shard) -> ``draining`` (its node's health says
NOT_SERVING: no new sequences) or ``down`` (its stream broke or its node stopped answering); ``retired``: replaced
by a spare (coordinator/replacement.py), out of the model for good. A node that answers
again is ``ready`` at once if it still holds the shard, else the shard is loaded again (not sooner than
``RELOAD_RETRY_S`` after a failed load). A lane whose route loses a replica is marked lost: the engine replays its
sequences elsewhere.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import grpc

from coordinator import metrics
from coordinator.membership import NodeEvent
from coordinator.node_client import ForwardStream, ModelLoad
from coordinator.pipeline import Pipeline, Replica, Route, StageGroup
from coordinator.scheduler import Scheduler
from protos import shard_pb2, wire

logger = logging.getLogger(__name__)
RELOAD_RETRY_S = 10.0  # a shard that failed to load is tried again this much later


class ReplicaSet:
    """A model's replicas and the routes of its ``depth`` lanes; tells the scheduler through ``set_lanes``."""

    def __init__(self, pipeline: Pipeline, scheduler: Scheduler, model_load: ModelLoad | None,
                 wake: Callable[[], None]) -> None:
        self.model = pipeline.label  # the served model (logs, metrics); its shards are pipeline.model on the nodes
        self.pipeline = pipeline
        self.scheduler = scheduler
        self.model_load = model_load
        self.wake = wake  # the engine has something new to do
        self.routes: list[Route] = []
        self.lost_lanes: set[int] = set()  # lanes with a sequence whose KV is gone on some node of the route
        self.reloading: set[Replica] = set()
        self.can_replace: Callable[[], bool] = lambda: False  # a spare node could take a dead replica's range
        for replica in pipeline.replicas:
            replica.stream.on_stream_lost = self._on_stream_lost

    @property
    def ready(self) -> bool:
        """Every layer range has a replica that can take work."""
        return all(g.ready() for g in self.pipeline.groups)

    @property
    def awaiting_replacement(self) -> bool:
        """A range has no ready replica, only dead ones, and a spare node can take it over (coordinator/
        replacement.py): requests wait for it instead of failing."""
        stuck = [g for g in self.pipeline.groups if not g.ready()]
        return bool(stuck) and all(any(r.state == "down" for r in g.replicas) for g in stuck) and self.can_replace()

    def unavailable_reason(self) -> str:
        parts: list[str] = []
        for group in self.pipeline.groups:
            if not group.ready():
                parts.extend(f"{r.describe()} is {r.state}" + (f": {r.last_error}" if r.last_error else "")
                             for r in group.replicas)
        return "; ".join(parts)

    def loading_on(self, node_id: str) -> bool:
        replica = self.pipeline.replica_on(node_id)
        return replica is not None and replica.state == "loading"

    # ----- lanes ------------------------------------------------------------------------------------------

    def set_depth(self, depth: int) -> None:
        """``depth`` lanes, at least one per replica of the most replicated range, spread over the replicas."""
        depth = max(depth, max(len(g.replicas) for g in self.pipeline.groups))
        self.routes = [self._spread_route(lane, only_ready=False) for lane in range(depth)]
        self.sync()

    def _spread_route(self, lane: int, only_ready: bool = True) -> Route:
        out = []
        for group in self.pipeline.groups:
            choices = group.ready() if only_ready else group.replicas
            out.append(choices[lane % len(choices)] if choices else group.replicas[0])
        return tuple(out)

    def reroute_idle_lanes(self, busy: set[int]) -> None:
        """Lanes with no sequences (and not ``busy``) take the spread route over the replicas that are ready now."""
        for lane in range(len(self.routes)):
            if lane not in busy and lane not in self.lost_lanes and not self.scheduler.lane_members(lane):
                self.routes[lane] = self._spread_route(lane)
        self.sync()

    def take_lost_lanes(self, busy: set[int]) -> list[int]:
        """Lost lanes whose micro-batch came back (those in ``busy`` wait for theirs)."""
        lanes = sorted(lane for lane in self.lost_lanes if lane not in busy)
        self.lost_lanes.difference_update(lanes)
        return lanes

    def sync(self) -> None:
        """Tells the scheduler each lane's nodes, the usable lanes and the KV budget of every node."""
        replicas = self.pipeline.replicas
        ready = [r.kv_capacity_tokens for r in replicas if r.usable and r.kv_capacity_tokens > 0]
        self.scheduler.set_lanes(
            [tuple(r.node_id for r in route) for route in self.routes],
            {lane for lane, route in enumerate(self.routes) if all(r.usable for r in route)},
            {r.node_id: r.kv_capacity_tokens for r in replicas if r.kv_capacity_tokens > 0},
            min(ready) if ready else None)

    def send_evictions(self) -> None:
        """Prefix-cache blocks the scheduler evicted go to their nodes with the next micro-batch or Release."""
        if self.scheduler.prefix is None:
            return
        for node, hashes in self.scheduler.prefix.take_evictions().items():
            replica = self.pipeline.replica_on(node)
            if replica is not None and replica.state != "down":
                replica.pending_evict.extend(hashes)

    def adopt(self, group: StageGroup, replica: Replica) -> None:
        """A new replica of ``group``'s range (a spare taking over): the lanes take it once it is ready."""
        group.replicas.append(replica)
        replica.stream.on_stream_lost = self._on_stream_lost
        metrics.init_model(self.model, [replica.node_id])

    def retire(self, replica: Replica) -> None:
        """A replica that is gone for good (replaced): out of its group; idle lanes stop routing through it."""
        for group in self.pipeline.groups:  # its lanes were replayed elsewhere; idle lanes are rerouted each tick
            if replica in group.replicas and len(group.replicas) > 1:
                group.replicas.remove(replica)
                replica.state = "retired"  # never usable again, whatever a reload under way answers
        self.sync()
        self.wake()

    # ----- node events ------------------------------------------------------------------------------------

    def _on_stream_lost(self, stream: ForwardStream, why: str) -> None:
        replica = self.pipeline.replica_on(stream.node_id)
        if replica is not None:
            self.replica_lost(replica, f"its Forward stream broke: {why}")

    def replica_lost(self, replica: Replica, why: str, state: str = "down") -> None:
        """The KV caches on ``replica`` are gone: every lane through it replays elsewhere."""
        if replica.state not in ("down", "loading") or state != replica.state:
            logger.warning("model %s: %s is %s: %s", self.model, replica.describe(), state, why)
            metrics.NODE_DOWN.labels(self.model, replica.node_id).inc()
        replica.state, replica.last_error = state, why
        replica.forget_upkeep()  # the node has freed them, or is gone
        if self.scheduler.prefix is not None:
            self.scheduler.prefix.forget(replica.node_id)
        for lane, route in enumerate(self.routes):
            if replica in route and self.scheduler.lane_members(lane):
                self.lost_lanes.add(lane)
        replica.stream.drop(why)  # fails what is in flight there at once
        self.sync()
        self.wake()

    def on_node_event(self, event: NodeEvent, reload: bool) -> None:
        """A membership event; ``reload``: a node that answers without the shard gets it loaded again."""
        replica = self.pipeline.replica_on(event.node_id)
        if replica is None:
            return
        if event.kind == "down" and replica.state != "down":
            self.replica_lost(replica, event.why)
        elif event.kind == "draining" and replica.state == "ready":
            logger.info("model %s: %s is draining", self.model, replica.describe())
            replica.state = "draining"  # takes no new sequences; those it holds go on until it leaves
            self.sync()
        elif event.kind == "up" and reload and event.info is not None and replica not in self.reloading:
            self._node_up(replica, event.info)

    def _node_up(self, replica: Replica, info: shard_pb2.NodeInfo) -> None:
        """A healthy poll: the replica is ready if the node holds its shard, else the shard is loaded again."""
        shard = next((s for s in info.shards if s.model == self.pipeline.model), None)
        holds = shard is not None and wire.layer_range_from_proto(shard.layers) == replica.layers
        if holds and replica.state != "ready":
            assert shard is not None
            logger.info("model %s: %s is ready again", self.model, replica.describe())
            replica.state, replica.last_error = "ready", ""
            replica.kv_capacity_tokens = shard.kv_capacity_tokens
            self.sync()
            self.wake()
        elif not holds and time.monotonic() >= replica.retry_load_at:
            if replica.state == "ready":  # restarted between two polls: its shard and caches are gone
                self.replica_lost(replica, "the node no longer holds its shard (restarted?)", state="loading")
            self.reloading.add(replica)
            asyncio.get_running_loop().create_task(self._reload(replica), name=f"reload-{replica.node_id}")

    async def _reload(self, replica: Replica) -> None:
        try:
            await self.load(replica)
        finally:
            self.reloading.discard(replica)
            self.sync()
            self.wake()

    async def load(self, replica: Replica) -> None:
        """LoadShard on the replica's node (idempotent there); sets its state to ready or down."""
        assert self.model_load is not None
        replica.state = "loading"
        started = time.monotonic()
        try:
            info = await replica.client.load(self.model_load.shard(replica.layers))
        except grpc.aio.AioRpcError as e:
            if replica.state != "retired":
                replica.state, replica.last_error = "down", f"could not load its shard: {e.code().name}: {e.details()}"
            replica.retry_load_at = time.monotonic() + RELOAD_RETRY_S
            logger.error("model %s: %s %s", self.model, replica.describe(), replica.last_error)
            return
        if replica.state == "retired":  # replaced while it reloaded: it serves nothing (its shard is unloaded)
            return
        replica.kv_capacity_tokens = info.kv_capacity_tokens
        replica.weight_bytes = info.weight_bytes
        if self.scheduler.prefix is not None and info.kv_block_size not in (0, self.scheduler.prefix.block_size):
            logger.warning("model %s: %s has KV blocks of %d positions, not %d: prefix caching is off", self.model,
                           replica.describe(), info.kv_block_size, self.scheduler.prefix.block_size)
            self.scheduler.prefix = None
        replica.state, replica.last_error = "ready", ""
        logger.info("model %s: %s loaded (%.1f MB) in %.1f s", self.model, replica.describe(),
                    info.weight_bytes / 1e6, time.monotonic() - started)
