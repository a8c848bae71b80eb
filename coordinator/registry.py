"""Which models the coordinator serves, and changing that at runtime (the first level of scheduling).

The coordinator schedules models onto nodes; each model's engine schedules tokens through its
pipeline. A model added at runtime either names its nodes, or is placed on the ready nodes with free memory
(weights + KV budget, measured by the nodes themselves with a dry-run LoadShard): with one replica per range, the
split their speed profiles predict fastest (coordinator/plan_preview.py). If it does not fit now it stays
``pending``, tried again every ``coordinator.pending_recheck_s`` seconds and at once when a model is removed or a
node joins. Removal is graceful: the model stops admitting, in-flight requests finish up to a timeout, then every
shard is unloaded. Dead replicas move to spare nodes (coordinator/replacement.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, replace

import grpc

from coordinator import metrics
from coordinator.cluster import build_engine, load_engine
from coordinator.draft_model import check_draft_models, draft_model_problem
from coordinator.engine import ModelEngine
from coordinator.handover import let_finish
from coordinator.membership import Membership, NodeEvent
from coordinator.model_meta import read_model_meta
from coordinator.node_client import Deadlines, NodeClients, unload_shard
from coordinator.node_names import RegistryError, check_new_node
from coordinator.placement import DoesNotFit, NodeRoom, Placement
from coordinator.plan_preview import place_model
from coordinator.profile_book import ProfileBook
from coordinator.rebalance import Rebalancer, move_off
from coordinator.replacement import ReplacementWatch
from coordinator.sizing import fit_budgets
from protos.config import Config, ModelConfig, NodeConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelRequest:
    """A model to serve: its name, its folder in the model cache, and where it goes (or ``replicas``)."""

    model: ModelConfig  # stages empty: place it
    replicas: int = 1


@dataclass
class PendingModel:
    request: ModelRequest
    reason: str
    since: float  # time.time()


class ModelRegistry:
    def __init__(self, config: Config, clients: NodeClients | None = None) -> None:
        """``clients``: the pool of node clients (default: real ones to the configured nodes)."""
        self.config = config
        self.nodes: dict[str, NodeConfig] = {n.id: n for n in config.nodes}
        self.engines: dict[str, ModelEngine] = {}
        self.pending: dict[str, PendingModel] = {}
        self.clients = clients if clients is not None else NodeClients(Deadlines.from_config(config.coordinator))
        for node in config.nodes:
            self.clients.add(node)
        self.membership = Membership(self.clients, config.coordinator, self._loading_on)
        self.membership.subscribe(self._on_node_event)
        self._recheck = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._watch: asyncio.Task[None] | None = None
        self.placement_lock = asyncio.Lock()  # one placement at a time: two never count the same free memory
        self._loads: dict[str, asyncio.Task[None]] = {}  # models whose shards are being loaded (remove cancels it)
        self.profiles = ProfileBook()  # the nodes' speed per model format and their links (coordinator/profile_book.py)
        self.replacements = ReplacementWatch(self)  # dead replicas moved to spare nodes
        self.rebalancer = Rebalancer(self)  # live re-placement (coordinator/rebalance.py)
        self.placed_for: dict[str, ModelRequest] = {}  # models the coordinator placed itself, as they were asked for
        self.membership.subscribe(self.replacements.on_node_event)

    async def start(self) -> None:
        """Loads the configured models, then watches the nodes and the pending models."""
        for m in self.config.models:
            m = await fit_budgets(self.config, self.clients, m)
            self.engines[m.name] = build_engine(self.config, m, self.clients)
            self.rebalancer.watch(self.engines[m.name])
            self.engines[m.name].use_draft_model(self.engines)
        check_draft_models(self.engines)
        await asyncio.gather(*(load_engine(self.config.model(n), e) for n, e in self.engines.items()))
        self.membership.start()
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._recheck_loop(), name="pending-models")
        self._watch = loop.create_task(self.replacements.run(), name="replacements")

    async def stop(self) -> None:
        for task in (self._task, self._watch):
            if task:
                task.cancel()
        self.rebalancer.stop()
        for load in list(self._loads.values()):
            load.cancel()
        await self.membership.stop()
        for engine in self.engines.values():
            await engine.stop()

    async def close(self) -> None:
        await self.clients.close()

    def _on_node_event(self, event: NodeEvent) -> None:
        for engine in list(self.engines.values()):
            engine.on_node_event(event)

    def _loading_on(self, node_id: str) -> bool:
        return any(e.replicas.loading_on(node_id) for e in self.engines.values())

    # ----- nodes ------------------------------------------------------------------------------------------

    def register_node(self, node: NodeConfig) -> NodeConfig | None:
        """A node that joined: polled from now on, and usable for placements. Returns it with its address in the
        canonical spelling; None if it was known. An alias of a known node's address is refused."""
        checked = check_new_node(self.nodes, node)
        if checked is None:
            return None
        node = checked
        self.nodes[node.id] = node
        self.membership.add_node(node)
        logger.info("node %s (%s) joined the cluster", node.id, node.address)
        asyncio.get_running_loop().create_task(self.rebalancer.node_joined(node.id), name=f"profile-{node.id}")
        self._recheck.set()
        return node

    async def remove_node(self, node_id: str, drain: bool = False) -> NodeConfig:
        """Forgets a node: no more polls or placements. Refused while a model (serving, loading or draining) has a
        shard on it, even with other replicas; with ``drain`` the serving ones move off it first (live
        re-placement onto the other ready nodes)."""
        node = self.nodes.get(node_id)
        if node is None:
            raise RegistryError(grpc.StatusCode.NOT_FOUND, f"no node {node_id!r}; known: {sorted(self.nodes)}")
        if drain:
            await move_off(self, node_id)
        async with self.placement_lock:  # never in the middle of a placement that may choose it
            users = [name for name, e in self.engines.items() if e.pipeline.replica_on(node_id) is not None]
            if users:
                raise RegistryError(grpc.StatusCode.FAILED_PRECONDITION, (
                    f"node {node_id!r} holds shards of model(s) {sorted(users)}; move them off it first "
                    f"(DELETE /api/nodes/{node_id}?drain=true) or remove them (DELETE /api/models/{{name}})"))
            del self.nodes[node_id]
            await self.membership.remove_node(node_id)
            await self.clients.remove(node_id)
        metrics.forget_node(node_id)  # its series leave /metrics
        logger.info("node %s (%s) removed from the cluster", node_id, node.address)
        return node

    def ready_nodes(self) -> list[str]:
        return [n for n in self.nodes if self.membership.state(n) == "ready" and self.membership.status[n].info]

    def room(self, node_id: str) -> NodeRoom:
        info = self.membership.status[node_id].info
        assert info is not None
        free = None if not info.memory_budget_bytes else max(0, info.memory_budget_bytes - info.memory_used_bytes)
        return NodeRoom(node_id, free)

    # ----- models -----------------------------------------------------------------------------------------

    def state(self, name: str) -> str:
        if name in self.pending:
            return "pending"
        engine = self.engines[name]
        if engine.draining:
            return "draining"
        if not engine.loaded:
            return "loading"
        return "serving" if engine.ready else "unavailable"

    async def add(self, request: ModelRequest) -> str:
        """Serves a model from the model cache; returns its state (loading, serving, pending)."""
        m = request.model
        if m.name in self.engines or m.name in self.pending:
            raise RegistryError(grpc.StatusCode.ALREADY_EXISTS, f"model {m.name!r} is already {self.state(m.name)}; "
                                "remove it first to change it")
        model_dir = self.config.model_dir(m.source)
        try:
            read_model_meta(model_dir, m.max_context)
        except FileNotFoundError:
            raise RegistryError(grpc.StatusCode.NOT_FOUND, (
                f"no model {m.source!r} in the model cache (model_cache_dir); prepare it first with "
                f"`shardline models --name {m.source} --source <folder, .gguf or package>`")) from None
        for nid in m.nodes:
            if nid not in self.nodes:
                raise RegistryError(grpc.StatusCode.INVALID_ARGUMENT,
                                    f"unknown node {nid!r}; known: {sorted(self.nodes)}")
        if m.draft_model:
            vocab = read_model_meta(model_dir, m.max_context).vocab_size
            problem = draft_model_problem(m.name, m.draft_model, vocab, self.engines, self.pending)
            if problem:
                raise RegistryError(grpc.StatusCode.INVALID_ARGUMENT, problem)
        if m.stages:
            await self._load(m)
        else:
            self.pending[m.name] = PendingModel(request, "waiting for placement", time.time())
            await self._try_place(m.name)
        engine = self.engines.get(m.name)
        if m.name not in self.pending and (engine is None or engine.draining):  # a DELETE won
            raise RegistryError(grpc.StatusCode.ABORTED, f"model {m.name!r} was removed while it was being added")
        return self.state(m.name)

    async def _try_place(self, name: str) -> None:
        async with self.placement_lock:
            pending = self.pending.get(name)
            if pending is None:
                return
            m = pending.request.model
            try:
                placement = await self._place(pending.request)
                if self.pending.get(name) is not pending:  # removed (and maybe added again) meanwhile
                    logger.info("model %s was removed while it was being placed", name)
                    return
            except DoesNotFit as e:
                if pending.reason != str(e):
                    logger.info("model %s stays pending: %s (tried again every %.0f s)", name, e,
                                self.config.coordinator.pending_recheck_s)
                pending.reason = str(e)
                return
            except (grpc.aio.AioRpcError, ValueError) as e:
                pending.reason = f"cannot place it now: {e}"
                return
            placed = replace(m, stages=placement.stages, layer_ranges=placement.ranges)
            logger.info("model %s placed: %s", name, ", ".join(
                f"{'+'.join(nodes)} {r}" for nodes, r in zip(placement.stages, placement.ranges)))
            try:
                await self._load(placed)  # takes it out of pending
                self.placed_for[name] = pending.request  # re-placed when nodes join (coordinator/rebalance.py)
            except RegistryError as e:
                pending.reason = str(e)

    async def _place(self, request: ModelRequest) -> Placement:
        return await place_model(self, request)  # coordinator/plan_preview.py: for speed, or by memory with replicas

    async def _load(self, m: ModelConfig) -> None:
        try:
            engine = build_engine(self.config, m, self.clients, self.config.model_dir(m.source))
        except ValueError as e:
            raise RegistryError(grpc.StatusCode.INVALID_ARGUMENT, f"cannot split {m.name}: {e}") from None
        self.pending.pop(m.name, None)
        engine.use_draft_model(self.engines)
        self.rebalancer.watch(engine)
        self.engines[m.name] = engine
        load = asyncio.get_running_loop().create_task(load_engine(m, engine), name=f"load-{m.name}")
        self._loads[m.name] = load
        load.add_done_callback(lambda t: self._loads.pop(m.name) if self._loads.get(m.name) is t else None)
        try:
            await asyncio.shield(load)  # a caller that goes away does not stop the load; a removal does
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if not load.cancelled() or (current is not None and current.cancelling()):
                raise  # our caller was cancelled (the load goes on); else a removal cancelled the load

    async def remove(self, name: str, timeout_s: float) -> dict[str, tuple[int, int]]:
        """Stops admitting, lets in-flight requests finish for up to ``timeout_s``, unloads every shard.

        Returns each node's RSS before and after the unload."""
        if name in self.pending:
            del self.pending[name]
            logger.info("pending model %s removed", name)
            return {}
        await self.rebalancer.settled(name)  # a new layout under way: it is removed once it serves
        engine = self.engines.get(name)
        if engine is None:
            raise RegistryError(grpc.StatusCode.NOT_FOUND, f"model {name!r} is not served; "
                                f"served: {sorted(self.engines)}, pending: {sorted(self.pending)}")
        if engine.draining:
            raise RegistryError(grpc.StatusCode.FAILED_PRECONDITION, f"model {name!r} is already being removed")
        engine.start_draining()
        load = self._loads.get(name)
        if load is not None and not load.done():  # still loading: stop the load, then unload what it loaded
            logger.info("model %s is removed while it loads: the load is cancelled", name)
            load.cancel()
            await asyncio.gather(load, return_exceptions=True)
        await let_finish(engine, timeout_s)
        await engine.stop(f"model {name} was removed")
        freed = {r.node_id: await unload_shard(engine.pipeline.model, r.client) for r in engine.pipeline.replicas}
        del self.engines[name]
        self.placed_for.pop(name, None)
        metrics.forget_model(name)  # its series (per node too) leave /metrics
        logger.info("model %s removed; RSS per node (MB): %s", name, ", ".join(
            f"{n} {b / 1e6:.0f} -> {a / 1e6:.0f}" for n, (b, a) in freed.items()))
        self._recheck.set()  # its memory may let a pending model in
        return freed

    async def _recheck_loop(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._recheck.wait(), self.config.coordinator.pending_recheck_s)
            except TimeoutError:
                pass
            self._recheck.clear()
            for name in list(self.pending):
                await self._try_place(name)
