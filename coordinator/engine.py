"""The generation loop of one model: admit -> one micro-batch per idle lane -> stream tokens -> release.

Up to ``depth`` micro-batches are in flight at once, so while the last stage works on one, the
first stage already works on the next. Each lane runs along a route (one replica of every layer
range). When a node of a route is lost (its stream broke, its health checks failed), every sequence
of the lanes through it goes back to the front of the queue with a new sequence id and is replayed,
prompt plus the tokens generated so far, as a prefill along a route of healthy replicas: its lost KV
is rebuilt, and decoding goes on where it stopped. Without a healthy replica for some range, the
model is unavailable: its requests end with an error naming the node and range.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass

import grpc

from coordinator import metrics
from coordinator.model_meta import ModelMeta
from coordinator.pipeline import Pipeline, Replica, Route, StepResult
from coordinator.request import Request, TokenEvent
from coordinator.scheduler import MicroBatchPlan, Scheduler
from coordinator.stage_client import StageClient, StageError
from protos import shard_pb2, wire

logger = logging.getLogger(__name__)
RELOAD_RETRY_S = 10.0  # a shard that failed to load is tried again this much later


@dataclass
class FailoverStats:
    failovers: int = 0  # sequences moved to another route
    recoveries: int = 0  # of those, how many produced their next token
    last_recovery_seconds: float = 0.0  # loss seen -> next token, of the last recovered sequence


@dataclass(frozen=True)
class ShardLoad:
    """What LoadShard needs besides the replica's layers."""

    model_path: str
    dtype: str
    device: str
    kv_cache_tokens: int
    timeout_s: float
    max_sequences: int = 0  # per shard (0 = the node's default)


class ModelEngine:
    def __init__(self, name: str, meta: ModelMeta, pipeline: Pipeline, scheduler: Scheduler,
                 shard_load: ShardLoad | None = None) -> None:
        self.name = name
        self.meta = meta
        self.pipeline = pipeline
        self.scheduler = scheduler
        self.shard_load = shard_load
        self.loaded = False  # the first load finished (some replicas may have failed)
        self.draining = False  # being removed: admits nothing new
        self.stats = FailoverStats()
        self.routes: list[Route] = []
        self._wakeup = asyncio.Event()
        self._lost_lanes: set[int] = set()  # lanes with a sequence whose KV is gone on some node of the route
        self._in_flight: dict[int, asyncio.Task[None]] = {}  # lane -> its micro-batch
        self._reloading: set[Replica] = set()
        self._task: asyncio.Task[None] | None = None
        for replica in pipeline.replicas:
            replica.client.on_stream_lost = self._on_stream_lost
        metrics.init_model(name, [r.node_id for r in pipeline.replicas])
        self.set_depth(scheduler.depth)

    # ----- state -----------------------------------------------------------------------------------------

    @property
    def depth(self) -> int:
        return self.scheduler.depth

    @property
    def num_in_flight(self) -> int:
        return len(self._in_flight)

    @property
    def ready(self) -> bool:
        """Every layer range has a replica that can take work."""
        return self.loaded and all(g.ready() for g in self.pipeline.groups)

    def unavailable_reason(self) -> str:
        if not self.loaded:
            return "it is still loading"
        parts = []
        for group in self.pipeline.groups:
            if not group.ready():
                parts.extend(f"{r.describe(self.name)} is {r.state}" + (f": {r.last_error}" if r.last_error else "")
                             for r in group.replicas)
        return "; ".join(parts)

    def set_depth(self, depth: int) -> None:
        """``depth`` lanes, at least one per replica of the most replicated range, spread over the replicas."""
        depth = max(depth, max(len(g.replicas) for g in self.pipeline.groups))
        self.scheduler.depth = depth
        self.routes = [self._spread_route(lane, only_ready=False) for lane in range(depth)]
        self._sync_routes()

    def _spread_route(self, lane: int, only_ready: bool = True) -> Route:
        out = []
        for group in self.pipeline.groups:
            choices = group.ready() if only_ready else group.replicas
            out.append(choices[lane % len(choices)] if choices else group.replicas[0])
        return tuple(out)

    def _sync_routes(self) -> None:
        self.scheduler.lane_routes = [tuple(r.node_id for r in route) for route in self.routes]
        self.scheduler.usable = {lane for lane, route in enumerate(self.routes) if all(r.usable for r in route)}
        self.scheduler.node_capacity = {r.node_id: r.kv_capacity_tokens for r in self.pipeline.replicas
                                        if r.kv_capacity_tokens > 0}
        ready = [r.kv_capacity_tokens for r in self.pipeline.replicas if r.usable and r.kv_capacity_tokens > 0]
        if ready:
            self.scheduler.kv_capacity_tokens = min(ready)

    # ----- lifecycle --------------------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name=f"engine-{self.name}")

    async def stop(self, why: str = "coordinator shutting down") -> None:
        for task in [self._task, *self._in_flight.values()]:
            if task:
                task.cancel()
        for r in [*self.scheduler.waiting, *self.scheduler.running]:
            r.finish("error", why)

    def submit(self, req: Request) -> None:
        """Queues a request; raises NeverFits (can never fit) or QueueFull (too many waiting)."""
        self.scheduler.add(req)
        self._wakeup.set()

    def cancel(self, req: Request) -> None:
        """Stops a request; one still waiting leaves the queue at once (it stops counting against max_waiting)."""
        if req.is_finished:
            return
        req.cancelled = True
        if req in self.scheduler.waiting and not req.in_flight:
            self.scheduler.remove(req)
            req.finish("cancelled")
        self._wakeup.set()

    # ----- node events (from the stage clients and the membership monitor) --------------------------------

    def _on_stream_lost(self, client: StageClient, why: str) -> None:
        replica = next(r for r in self.pipeline.replicas if r.client is client)
        self.replica_lost(replica, f"its Forward stream broke: {why}")

    def replica_lost(self, replica: Replica, why: str, state: str = "down") -> None:
        """The KV caches on ``replica`` are gone: every lane through it replays elsewhere."""
        if replica.state not in ("down", "loading") or state != replica.state:
            logger.warning("model %s: %s is %s: %s", self.name, replica.describe(self.name), state, why)
            metrics.NODE_DOWN.labels(self.name, replica.node_id).inc()
        replica.state, replica.last_error = state, why
        replica.pending_release.clear()  # the node has freed them, or is gone
        for lane, route in enumerate(self.routes):
            if replica in route and self.scheduler.lane_members(lane):
                self._lost_lanes.add(lane)
        replica.client.drop_stream(why)  # fails what is in flight there at once
        self._sync_routes()
        self._wakeup.set()

    def node_down(self, node_id: str, why: str) -> None:
        replica = self.pipeline.replica_on(node_id)
        if replica is not None and replica.state != "down":
            self.replica_lost(replica, why)

    def node_draining(self, node_id: str) -> None:
        """Takes no new sequences; those it holds go on until it leaves."""
        replica = self.pipeline.replica_on(node_id)
        if replica is not None and replica.state == "ready":
            logger.info("model %s: %s is draining", self.name, replica.describe(self.name))
            replica.state = "draining"
            self._sync_routes()

    def node_up(self, node_id: str, info: shard_pb2.NodeInfo) -> None:
        """A healthy poll: the replica is ready if the node holds its shard, else the shard is loaded again."""
        replica = self.pipeline.replica_on(node_id)
        if replica is None or replica in self._reloading or not self.loaded or self.draining:
            return
        shard = next((s for s in info.shards if s.model == self.name), None)
        holds = shard is not None and wire.layer_range_from_proto(shard.layers) == replica.layers
        if holds and replica.state != "ready":
            logger.info("model %s: %s is ready again", self.name, replica.describe(self.name))
            replica.state, replica.last_error = "ready", ""
            replica.kv_capacity_tokens = shard.kv_capacity_tokens
            self._sync_routes()
            self._wakeup.set()
        elif not holds and time.monotonic() >= replica.retry_load_at:
            if replica.state == "ready":  # restarted between two polls: its shard and caches are gone
                self.replica_lost(replica, "the node no longer holds its shard (restarted?)", state="loading")
            self._reloading.add(replica)
            asyncio.get_running_loop().create_task(self._reload(replica), name=f"reload-{node_id}")

    async def _reload(self, replica: Replica) -> None:
        try:
            await self.load_replica(replica)
        finally:
            self._reloading.discard(replica)
            self._sync_routes()
            self._wakeup.set()

    async def load_replica(self, replica: Replica) -> None:
        """LoadShard on the replica's node (idempotent there); sets its state to ready or down."""
        assert self.shard_load is not None
        spec = self.shard_load
        req = shard_pb2.LoadShardRequest(
            model=self.name, model_path=spec.model_path, layers=wire.layer_range_to_proto(replica.layers),
            dtype=spec.dtype, device=spec.device, kv_cache_tokens=spec.kv_cache_tokens,
            max_sequences=spec.max_sequences)
        replica.state = "loading"
        started = time.monotonic()
        try:
            info = await replica.client.load(req, spec.timeout_s)
        except grpc.aio.AioRpcError as e:
            replica.state, replica.last_error = "down", f"could not load its shard: {e.code().name}: {e.details()}"
            replica.retry_load_at = time.monotonic() + RELOAD_RETRY_S
            logger.error("model %s: %s %s", self.name, replica.describe(self.name), replica.last_error)
            return
        replica.kv_capacity_tokens = info.kv_capacity_tokens
        replica.weight_bytes = info.weight_bytes
        replica.state, replica.last_error = "ready", ""
        logger.info("model %s: %s loaded (%.1f MB) in %.1f s", self.name, replica.describe(self.name),
                    info.weight_bytes / 1e6, time.monotonic() - started)

    # ----- the loop ---------------------------------------------------------------------------------------

    async def _loop(self) -> None:
        while True:
            try:
                self._wakeup.clear()
                await self._tick()
                await self._wakeup.wait()
            except asyncio.CancelledError:
                raise
            except Exception:  # the loop must survive anything one batch does
                logger.exception("engine %s: unexpected error", self.name)
                await asyncio.sleep(0.1)

    async def _tick(self) -> None:
        for req in self.scheduler.drain_cancelled():
            if req.num_computed > 0 and req.lane >= 0:
                self._release_later(req, self.routes[req.lane])
            req.finish("cancelled")
            logger.info("request %s cancelled after %d tokens", req.request_id, len(req.output_ids))
        self._replay_lost_lanes()
        self._reroute_idle_lanes()
        if not self.ready:
            self._fail_waiting()
        for req in self.scheduler.admit():
            req.route_nodes = self.scheduler.lane_routes[req.lane]
            if req.failovers == 0:
                metrics.QUEUE.labels(self.name).observe(req.queue_seconds)
                metrics.PROMPT_TOKENS.labels(self.name).inc(req.num_prompt_tokens)
            logger.debug("request %s admitted to lane %d after %.3f s in the queue", req.request_id, req.lane,
                         req.queue_seconds)
        for lane, route in enumerate(self.routes):
            if lane in self._in_flight or not all(r.state in ("ready", "draining") for r in route):
                continue  # a draining node finishes the sequences it holds but takes no new ones
            plan = self.scheduler.plan(lane)
            if plan is None:
                continue
            self._in_flight[lane] = asyncio.get_running_loop().create_task(
                self._run(route, plan), name=f"{self.name}-lane{lane}")
        busy = {r for lane in self._in_flight for r in self.routes[lane]}
        await self.pipeline.flush_releases(busy)

    def _release_later(self, req: Request, route: Route) -> None:
        for replica in route:
            if replica.state != "down":
                replica.pending_release.append(req.seq_id)

    def _replay_lost_lanes(self) -> None:
        """Sequences of lanes that lost a node go back to the front of the queue, to be replayed elsewhere."""
        for lane in sorted(self._lost_lanes):
            if lane in self._in_flight:
                continue  # when its micro-batch comes back
            self._lost_lanes.discard(lane)
            members = self.scheduler.lane_members(lane)
            route = self.routes[lane]
            for req in members:
                self._release_later(req, route)  # healthy nodes of the old route free it
                old = req.seq_id
                req.restart_on_new_route(f"{req.request_id}-{uuid.uuid4().hex[:8]}")
                self.stats.failovers += 1
                metrics.FAILOVERS.labels(self.name).inc()
                logger.warning("request %s: lost its KV (route %s); replaying %d tokens (prompt %d + generated %d) "
                               "as %s", req.request_id, "/".join(r.node_id for r in route), req.num_context_tokens,
                               req.num_prompt_tokens, len(req.output_ids), req.seq_id)
                logger.debug("request %s: old sequence %s released on the healthy nodes", req.request_id, old)
            self.scheduler.requeue_front(members)

    def _reroute_idle_lanes(self) -> None:
        """Lanes with no sequences take the spread route over the replicas that are ready now."""
        for lane in range(self.depth):
            if lane not in self._in_flight and lane not in self._lost_lanes and not self.scheduler.lane_members(lane):
                self.routes[lane] = self._spread_route(lane)
        self._sync_routes()

    def _fail_waiting(self) -> None:
        if not self.loaded or not self.scheduler.waiting:
            return
        why = f"model {self.name} is unavailable: {self.unavailable_reason()}"
        for req in list(self.scheduler.waiting):
            self.scheduler.remove(req)
            req.finish("error", why)
        logger.error("%s; its waiting requests were failed", why)

    async def _run(self, route: Route, plan: MicroBatchPlan) -> None:
        try:
            result = await self.pipeline.step(route, plan)
        except StageError as e:
            if not e.stream_lost:  # a refused batch: the node is fine, these sequences are not
                self._fail(plan, route, self._describe(e))
            # else: replica_lost() has marked the lane; its sequences are replayed at the next tick
        except RuntimeError as e:
            self._fail(plan, route, str(e))
        else:
            self._deliver(plan, route, result)
        finally:
            for entry in plan.entries:
                entry.request.in_flight = False
            del self._in_flight[plan.lane]
            self._wakeup.set()

    def _fail(self, plan: MicroBatchPlan, route: Route, why: str) -> None:
        logger.error("model %s: micro-batch of %d sequence(s) failed: %s", self.name, len(plan.entries), why)
        for entry in plan.entries:
            self._end_with_error(entry.request, route, why)

    def _end_with_error(self, req: Request, route: Route, why: str) -> None:
        self.scheduler.remove(req)
        self._release_later(req, route)
        req.finish("error", why)

    def _describe(self, error: StageError) -> str:
        """The failure with the node's address and layer range, so a user knows what is down."""
        replica = self.pipeline.replica_on(error.node_id)
        where = replica.describe(self.name) if replica else f"node {error.node_id}"
        return f"{where} failed: {error.code}: {error.message}"

    def _deliver(self, plan: MicroBatchPlan, route: Route, result: StepResult) -> None:
        """Publishes what the scheduler made of a micro-batch: tokens and ends to the requests, releases to the
        nodes, figures to the metrics."""
        self._observe_batch(plan, route, result)
        outcome = self.scheduler.postprocess(plan, result.next_token_ids, result.stage_seconds, result.failed)
        for req, why in outcome.failed:  # these alone failed on a node; the rest of the batch goes on
            logger.error("model %s: request %s failed alone: %s", self.name, req.request_id, why)
            self._release_later(req, route)
            req.finish("error", why)
        for req, token, reason in outcome.tokens:
            self._observe_token(req, route)
            if reason:
                self._release_later(req, route)
                req.finish(reason, token_ids=(token,))
            else:
                req.events.put_nowait(TokenEvent((token,)))

    def _observe_batch(self, plan: MicroBatchPlan, route: Route, result: StepResult) -> None:
        phase = "decode" if all(e.request.prefill_done for e in plan.entries) else "prefill"
        for replica, seconds in zip(route, result.stage_seconds):
            metrics.STAGE_SECONDS.labels(self.name, replica.node_id, phase).observe(seconds)
        metrics.BATCH_SEQS.labels(self.name).observe(len(plan.entries))
        metrics.BATCH_TOKENS.labels(self.name).observe(plan.num_tokens)

    def _observe_token(self, req: Request, route: Route) -> None:
        now = time.monotonic()
        if req.first_token_time is None:
            req.first_token_time = now
            metrics.TTFT.labels(self.name).observe(now - req.arrival_time)
        else:
            metrics.ITL.labels(self.name).observe(now - req.last_token_time)
        req.last_token_time = now
        if req.failover_started is not None:
            self._recovered(req, route)
        metrics.GENERATION_TOKENS.labels(self.name).inc()

    def _recovered(self, req: Request, route: Route) -> None:
        assert req.failover_started is not None
        took = time.monotonic() - req.failover_started
        req.failover_started = None
        stats = self.stats
        stats.recoveries += 1
        stats.last_recovery_seconds = took
        metrics.RECOVERIES.labels(self.name).inc()
        metrics.RECOVERY_SECONDS.labels(self.name).observe(took)
        logger.warning("request %s recovered on route %s: KV rebuilt and the next token out %.2f s after the loss",
                       req.request_id, "/".join(r.node_id for r in route), took)
