"""Live re-placement: a serving model moves to a new layout without ending a stream.

The coordinator computes the plan it would make now (coordinator/plan_preview.py: for speed with one replica per
range, by memory with more), loads it beside the current one under the next generation's shard names
(coordinator/generations.py), freezes the current layout once every new shard is ready, lets its micro-batches in
flight come back, moves every request over through the failover replay path (coordinator/handover.py: greedy output
is unchanged), swaps the model's engine and unloads the old shards. A new layout that does not load is unloaded
again and the model stays as it was.

When: ``POST /api/models/{name}/rebalance`` (the plan must be predicted at least ``EXPLICIT_GAIN`` faster, or
``force``); a node that joins (once profiled) or a stage found slow with ``coordinator.auto_rebalance`` on, for models
the coordinator placed itself, when the plan is predicted at least ``AUTO_GAIN`` faster; a node removed with
``DELETE /api/nodes/{id}`` while it holds shards (those models move off it first, whatever the speed).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import grpc

from coordinator import metrics
from coordinator.cluster import build_engine, load_engine
from coordinator.engine import ModelEngine
from coordinator.handover import move_requests, quiesce
from coordinator.node_client import unload_shard
from coordinator.node_names import RegistryError
from coordinator.placement import DoesNotFit, Placement
from coordinator.plan_preview import layout_speed, place_model, profile_on_join
from coordinator.slow_stages import watch_speed
from protos.data_structures import LayerRange

if TYPE_CHECKING:
    from coordinator.registry import ModelRegistry, ModelRequest

logger = logging.getLogger(__name__)
EXPLICIT_GAIN = 1.05  # asked for: the new plan must be predicted this much faster (or ``force``)
AUTO_GAIN = 1.2  # a node joined or a stage is slow: this much faster, so that noise in profiles moves nothing

Layout = tuple[tuple[tuple[str, ...], LayerRange], ...]  # per stage: its replicas' nodes and its layers


@dataclass
class Outcome:
    """What a re-placement did (``changed`` False: the model stays as it was, ``reason`` says why)."""

    model: str
    trigger: str  # what asked for it, in words
    kind: str  # request | join | slow | leave (the metric's label)
    changed: bool
    reason: str
    before: Layout
    after: Layout = ()
    streams: int = 1  # the model's expected concurrency
    before_tps: float | None = None  # predicted tokens/s of ``streams`` streams (None: unknown)
    after_tps: float | None = None
    moved: int = 0  # requests moved to the new layout
    seconds: float = 0.0
    generation: int = 1


def layout_of(engine: ModelEngine) -> Layout:
    return tuple((tuple(r.node_id for r in g.replicas), g.layers) for g in engine.pipeline.groups)


def describe(layout: Layout) -> str:
    return ", ".join(f"{'+'.join(nodes)} {layers.start}-{layers.end - 1}" for nodes, layers in layout)


class Rebalancer:
    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry
        self._busy: dict[str, asyncio.Event] = {}  # model -> set when its re-placement ends
        self._tasks: set[asyncio.Task[Outcome | None] | asyncio.Task[Outcome]] = set()  # (cancelled at shutdown)

    def busy_with(self, name: str) -> bool:
        return name in self._busy

    async def settled(self, name: str) -> None:
        """Returns once no re-placement of ``name`` is under way."""
        while (done := self._busy.get(name)) is not None:
            await done.wait()

    # ----- triggers ---------------------------------------------------------------------------------------

    async def node_joined(self, node_id: str) -> None:
        """A node joined: once it is profiled, the models the coordinator placed move if it makes them faster."""
        await profile_on_join(self.registry, node_id)
        if node_id in self.registry.nodes and self.registry.membership.state(node_id) == "ready":
            self.after_join(node_id)

    def after_join(self, node_id: str) -> None:
        for name in list(self.registry.placed_for):
            self._spawn(name, f"node {node_id} joined", "join")

    def watch(self, engine: ModelEngine) -> None:
        """Judges the engine's stages against their profiles (coordinator/slow_stages.py); a slow one may move it."""
        watch_speed(engine, self.registry.profiles, self.registry.membership.note,
                    functools.partial(self.on_slow, engine.name))

    def on_slow(self, name: str, node_id: str) -> None:
        """A stage of ``name`` on ``node_id`` is slow: with coordinator.auto_rebalance, the node is measured again and
        the model moves if its new plan is faster."""
        if not self.registry.config.coordinator.auto_rebalance or name not in self.registry.placed_for:
            return
        self.registry.profiles.forget(node_id)
        self._spawn(name, f"node {node_id} is slow", "slow")

    def _spawn(self, name: str, trigger: str, kind: str) -> None:
        task = asyncio.get_running_loop().create_task(self._quietly(name, trigger, kind), name=f"rebalance-{name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _quietly(self, name: str, trigger: str, kind: str) -> Outcome | None:
        try:
            await self.settled(name)
            return await self.rebalance(name, trigger, kind, min_gain=AUTO_GAIN)
        except RegistryError as e:
            logger.info("model %s not re-placed (%s): %s", name, trigger, e)
        except Exception:  # an automatic re-placement must never take the coordinator down
            logger.exception("model %s: re-placement (%s) failed", name, trigger)
        return None

    def stop(self) -> None:
        for task in self._tasks:
            task.cancel()

    # ----- one re-placement -------------------------------------------------------------------------------

    async def rebalance(self, name: str, trigger: str, kind: str = "request", *,
                        min_gain: float | None = EXPLICIT_GAIN, exclude: frozenset[str] = frozenset()) -> Outcome:
        """Re-places ``name`` when the plan made now (without the ``exclude`` nodes) is predicted at least
        ``min_gain`` times faster (None: whenever it differs, e.g. to move off a node). RegistryError when it
        cannot be done now. A caller that goes away does not stop it: a layout half moved would stay frozen."""
        engine = self._movable(name)
        self._busy[name] = asyncio.Event()
        task = asyncio.get_running_loop().create_task(self._run(engine, trigger, kind, min_gain, exclude),
                                                      name=f"rebalance-{name}-run")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return await asyncio.shield(task)

    async def _run(self, engine: ModelEngine, trigger: str, kind: str, min_gain: float | None,
                   exclude: frozenset[str]) -> Outcome:
        name, done, started = engine.name, self._busy[engine.name], time.monotonic()
        try:
            async with self.registry.placement_lock:
                outcome, placement = await self._decide(engine, trigger, kind, min_gain, exclude)
                if placement is None:
                    return outcome
                new = await self._load(engine, placement)
            outcome.moved = await self._swap(engine, new)
            outcome.changed, outcome.generation = True, new.generation
            outcome.seconds = time.monotonic() - started
            self._tell(outcome)
            return outcome
        finally:
            del self._busy[name]
            done.set()

    def _movable(self, name: str) -> ModelEngine:
        engine = self.registry.engines.get(name)
        if engine is None or name in self.registry.pending:
            raise RegistryError(grpc.StatusCode.NOT_FOUND if engine is None and name not in self.registry.pending
                                else grpc.StatusCode.FAILED_PRECONDITION,
                                f"model {name!r} is not serving; served: {sorted(self.registry.engines)}")
        problem = ("it is being removed" if engine.draining else "it is still loading" if not engine.loaded
                   else "it is being re-placed already" if name in self._busy
                   else "a spare node is taking over one of its ranges" if self.registry.replacements.busy_with(name)
                   else "" if engine.config is not None else "its configuration is unknown")
        if problem:
            raise RegistryError(grpc.StatusCode.FAILED_PRECONDITION, f"model {name!r} cannot be re-placed now: "
                                f"{problem}")
        return engine

    def _request(self, engine: ModelEngine) -> ModelRequest:
        from coordinator.registry import ModelRequest  # the registry imports this module

        placed = self.registry.placed_for.get(engine.name)
        if placed is not None:
            return placed
        assert engine.config is not None
        replicas = min(len(g.replicas) for g in engine.pipeline.groups)
        # a model of the config is read from the cache folder of its name, whatever its source was
        return ModelRequest(replace(engine.config, source=engine.meta.path.name, stages=(), layer_ranges=None),
                            replicas)

    async def _decide(self, engine: ModelEngine, trigger: str, kind: str, min_gain: float | None,
                      exclude: frozenset[str]) -> tuple[Outcome, Placement | None]:
        """The outcome so far and the placement to load (None: the model stays)."""
        before = layout_of(engine)
        outcome = Outcome(engine.name, trigger, kind, False, "", before, generation=engine.generation)
        request = self._request(engine)
        try:
            placement = await place_model(self.registry, request, exclude)
        except DoesNotFit as e:
            outcome.reason = f"no new layout fits beside the current one: {e}"
            return outcome, None
        after = tuple(zip(placement.stages, placement.ranges))
        outcome.after = after
        outcome.streams = streams = request.model.expected_concurrency
        outcome.before_tps = self._speed(engine, before, streams)
        outcome.after_tps = self._speed(engine, after, streams)
        gain = (outcome.after_tps / outcome.before_tps) if outcome.before_tps and outcome.after_tps else None
        if after == before:
            outcome.reason = "it is already on the plan the coordinator would make now"
        elif min_gain is not None and gain is None:
            outcome.reason = "the nodes' profiles cannot compare the two layouts"
        elif min_gain is not None and gain is not None and gain < min_gain:
            outcome.reason = (f"the new plan ({describe(after)}) is predicted at {outcome.after_tps:.1f} tok/s against "
                              f"{outcome.before_tps:.1f} now ({gain:.2f}x; it moves at {min_gain:.2f}x or more)")
        else:
            return outcome, placement
        logger.info("model %s stays on %s (%s): %s", engine.name, describe(before), trigger, outcome.reason)
        return outcome, None

    def _speed(self, engine: ModelEngine, layout: Layout, streams: int) -> float | None:
        load = engine.replicas.model_load
        assert load is not None
        return layout_speed(self.registry, load, engine.meta.num_layers, [(nodes[0], r) for nodes, r in layout],
                            streams, star=engine.pipeline.forwarding == "star")

    async def _load(self, engine: ModelEngine, placement: Placement) -> ModelEngine:
        """The new layout, loaded beside the old and started (it has no requests yet)."""
        assert engine.config is not None
        registry = self.registry
        placed = replace(engine.config, stages=placement.stages, layer_ranges=placement.ranges)
        try:
            new = build_engine(registry.config, placed, registry.clients, engine.meta.path, engine.generation + 1)
        except ValueError as e:
            raise RegistryError(grpc.StatusCode.FAILED_PRECONDITION, f"cannot split {engine.name}: {e}") from None
        new.use_draft_model(registry.engines)
        self.watch(new)
        logger.info("model %s: loading layout %d (%s) beside layout %d", engine.name, new.generation,
                    describe(layout_of(new)), engine.generation)
        try:
            await load_engine(placed, new)
        except BaseException:
            await asyncio.shield(self._discard(new, "its re-placement was stopped"))
            raise
        if not new.replicas.ready:
            why = new.unavailable_reason()
            await self._discard(new, f"its new layout did not load: {why}")
            raise RegistryError(grpc.StatusCode.UNAVAILABLE, f"model {engine.name!r} stays as it was: its new "
                                f"layout did not load: {why}")
        return new

    async def _swap(self, old: ModelEngine, new: ModelEngine) -> int:
        """Freezes ``old``, moves its requests to ``new``, serves ``new``, unloads ``old``. Returns the requests
        moved."""
        await quiesce(old)
        moved = move_requests(old, new)  # and at once, with nothing in between:
        self.registry.engines[old.name] = new
        await self._discard(old, f"model {old.name} was re-placed")
        for node in {r.node_id for r in old.pipeline.replicas} - {r.node_id for r in new.pipeline.replicas}:
            metrics.forget_model_on(old.name, node)
        return len(moved)

    async def _discard(self, engine: ModelEngine, why: str) -> None:
        """Stops an engine that serves nothing and unloads its shards."""
        await engine.stop(why)
        await asyncio.gather(*(unload_shard(engine.pipeline.model, r.client) for r in engine.pipeline.replicas))

    def _tell(self, outcome: Outcome) -> None:
        metrics.REBALANCES.labels(outcome.model, outcome.kind).inc()
        what = (f"re-placed {outcome.model} ({outcome.trigger}): {describe(outcome.before)} -> "
                f"{describe(outcome.after)}, {outcome.moved} request(s) moved, {outcome.seconds:.1f} s")
        logger.warning("%s", what)
        for node in {n for nodes, _ in (*outcome.before, *outcome.after) for n in nodes}:
            self.registry.membership.note(node, what)


async def move_off(registry: ModelRegistry, node_id: str) -> None:
    """Every model serving on ``node_id`` moves to the other ready nodes (the node is being removed); RegistryError
    naming the first that cannot (it stays as it was)."""
    for name, engine in list(registry.engines.items()):
        if engine.pipeline.replica_on(node_id) is None or engine.draining or not engine.loaded:
            continue
        try:
            outcome = await registry.rebalancer.rebalance(name, f"node {node_id} is removed", "leave", min_gain=None,
                                                          exclude=frozenset({node_id}))
            why = "" if outcome.changed else outcome.reason
        except RegistryError as e:
            why = str(e)
        except grpc.aio.AioRpcError as e:
            why = f"a node could not be measured: {e.code().name}: {e.details()}"
        if why:
            raise RegistryError(grpc.StatusCode.FAILED_PRECONDITION, (
                f"node {node_id!r} holds shards of model {name!r}, which cannot move off it: {why}; remove the "
                f"model first (DELETE /api/models/{name}), then the node"))
