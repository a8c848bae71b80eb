"""A model's placement chosen for speed, and its preview (POST /api/models?dry_run=true): the nodes' speed profiles
(measured by each node for the model's shape and format, kept per node and format), their memory, the coordinator's
round trip to each, and the split that minimises the predicted time per token (coordinator/speed_placement.py),
beside today's split by configured capacity over the same nodes. Nothing is loaded."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import grpc

from coordinator.model_meta import read_model_meta
from coordinator.node_client import ModelLoad
from coordinator.node_names import RegistryError
from coordinator.partition import partition_layers
from coordinator.placement import DoesNotFit, ModelSizes, Placement, place
from coordinator.profile_book import node_info
from coordinator.sizing import measure, model_load
from coordinator.speed_model import Links, NodeSpeed, Prediction, Stage, cycle_seconds, predict
from coordinator.speed_placement import MaxLayers, NoPlan, SpeedPlan, plan_by_speed
from protos import coordinator_pb2, shard_pb2, wire
from protos.data_structures import LayerRange

if TYPE_CHECKING:
    from coordinator.registry import ModelRegistry, ModelRequest

logger = logging.getLogger(__name__)
REPORTED_CONCURRENCY = (8, 32)


async def profile_on_join(registry: ModelRegistry, node_id: str, wait_s: float = 120.0) -> None:
    """A node that joined is measured for every served model's format once it is ready (it holds nothing yet, so
    measuring slows nothing), so that placements and previews find its profile."""
    deadline = time.monotonic() + wait_s
    while node_id in registry.nodes and registry.membership.state(node_id) != "ready":
        if time.monotonic() > deadline:
            return
        await asyncio.sleep(0.5)
    for engine in list(registry.engines.values()):
        load = engine.replicas.model_load
        if load is None or node_id not in registry.nodes:
            continue
        try:
            await registry.profiles.speeds(registry.clients, [node_id], load)
        except grpc.aio.AioRpcError as e:
            logger.warning("node %s could not be profiled for %s: %s", node_id, load.model, e.details())


def memory_caps(sizes: ModelSizes, free: dict[str, int | None], num_layers: int) -> MaxLayers:
    """max_layers(node, first, last) for plan_by_speed: what each node's free memory holds (None: no budget)."""
    def max_layers(node_id: str, first: bool, last: bool) -> int:
        room = free.get(node_id)
        if room is None:
            return num_layers
        extra = (sizes.first_extra_bytes if first else 0) + (sizes.last_extra_bytes if last else 0)
        return max(0, min(num_layers, (room - extra) // max(sizes.per_layer, 1)))

    return max_layers


def capacity_split(num_layers: int, speeds: Sequence[NodeSpeed], capacities: Sequence[float], head_cost: float
                   ) -> list[Stage]:
    """Today's split by configured capacity over ``speeds``' nodes in their order (the comparison)."""
    ranges = partition_layers(num_layers, list(capacities), head_cost)
    return [Stage(s, r) for s, r in zip(speeds, ranges)]


def figures(stages: Sequence[Stage], prediction: Prediction, sizes: ModelSizes, num_layers: int,
            addresses: dict[str, str]) -> coordinator_pb2.PlanFigures:
    return coordinator_pb2.PlanFigures(
        stages=[coordinator_pb2.PlannedStage(node_id=s.node.node_id, address=addresses.get(s.node.node_id, ""),
                                             layers=wire.layer_range_to_proto(s.layers),
                                             memory_bytes=sizes.stage_bytes(s.layers, num_layers),
                                             step_seconds=step)
                for s, step in zip(stages, prediction.step_seconds)],
        single_stream_tps=prediction.single_tps,
        aggregate=[coordinator_pb2.ConcurrencyRate(concurrency=c, tokens_per_second=t)
                   for c, t in sorted(prediction.aggregate_tps.items())])


async def _plan(registry: ModelRegistry, request: ModelRequest, exclude: frozenset[str] = frozenset()) -> _Planned:
    """The plan AddModel makes for ``request``: explicit when nodes are named (the ranges given, or today's split over
    them), else the fastest over the ready nodes (but ``exclude``); and today's split by capacity over the same
    nodes."""
    m = request.model
    model_dir = registry.config.model_dir(m.source)
    try:
        meta = read_model_meta(model_dir, m.max_context)
    except FileNotFoundError:
        raise RegistryError(grpc.StatusCode.NOT_FOUND, f"no model {m.source!r} in the model cache") from None
    unknown = [n for n in m.nodes if n not in registry.nodes]
    if unknown:
        raise RegistryError(grpc.StatusCode.INVALID_ARGUMENT, f"unknown node {unknown[0]!r}; known: "
                            f"{sorted(registry.nodes)}")
    explicit = [replicas[0] for replicas in m.stages]
    candidates = explicit or [n for n in registry.ready_nodes() if n not in exclude]
    if not candidates:
        raise DoesNotFit("no node is ready")
    load = model_load(m, model_dir)
    sizes = await measure(registry.clients[candidates[0]], load, meta.num_layers)
    measured = await registry.profiles.speeds(registry.clients, candidates, load)
    links = await registry.profiles.links(registry.clients, candidates, m.forwarding == "star",
                                          registry.config.coordinator.ring_decode)
    speeds = [measured[n][0] for n in candidates]
    split_over = candidates[:meta.num_layers]  # today's split gives every node at least one layer
    baseline = capacity_split(meta.num_layers, speeds[:len(split_over)],
                              [registry.nodes[n].capacity for n in split_over], meta.head_cost)
    if explicit:
        stages = [Stage(s, r) for s, r in zip(speeds, m.layer_ranges)] if m.layer_ranges else baseline
        plan = SpeedPlan(tuple(stages), 0.0, predict(stages, meta.num_layers, REPORTED_CONCURRENCY, links))
    else:
        free = {n: registry.room(n).free_bytes for n in candidates}
        caps = memory_caps(sizes, free, meta.num_layers)
        if all(caps(n, False, False) < 1 for n in candidates):
            raise DoesNotFit(f"no ready node has room for at least one layer ({sizes.per_layer / 2**20:.1f} MiB with "
                             f"its KV budget); free: " + ", ".join(
                                 f"{n} {'no limit' if f is None else f'{f / 2**20:.1f} MiB'}" for n, f in free.items()))
        try:
            plan = plan_by_speed(meta.num_layers, speeds, caps, m.expected_concurrency, REPORTED_CONCURRENCY, links)
        except NoPlan:
            need = sizes.stage_bytes(LayerRange(0, meta.num_layers), meta.num_layers)
            have = sum(f for f in free.values() if f is not None)
            raise DoesNotFit(f"the model needs about {need / 2**20:.0f} MiB (weights + KV budget); the ready nodes "
                             f"have {have / 2**20:.0f} MiB free") from None
    addresses = {n: registry.nodes[n].address for n in candidates}
    return _Planned(meta.num_layers, sizes, plan, baseline, measured, addresses, bool(explicit), links)


@dataclass
class _Planned:
    num_layers: int
    sizes: ModelSizes
    plan: SpeedPlan
    baseline: list[Stage]
    measured: dict[str, tuple[NodeSpeed, shard_pb2.NodeProfile, float, str]]
    addresses: dict[str, str]
    explicit: bool
    links: Links


async def place_model(registry: ModelRegistry, request: ModelRequest, exclude: frozenset[str] = frozenset()
                      ) -> Placement:
    """Where a model added without nodes goes (DoesNotFit when the ready nodes but ``exclude`` cannot hold it now):
    with one replica per range, the split the nodes' speed profiles predict fastest; with replicas, by free memory."""
    m = request.model
    if request.replicas > 1:
        meta = read_model_meta(registry.config.model_dir(m.source), m.max_context)
        ready = [n for n in registry.ready_nodes() if n not in exclude]
        if not ready:
            raise DoesNotFit("no node is ready")
        sizes = await measure(registry.clients[ready[0]], model_load(m, registry.config.model_dir(m.source)),
                              meta.num_layers)
        return place(meta.num_layers, sizes, [registry.room(n) for n in ready], request.replicas, meta.head_cost)
    planned = await _plan(registry, request, exclude)
    plan = planned.plan
    logger.info("model %s placed for speed at %d stream(s): %s; predicted %.1f tok/s for one stream (%.1f by "
                "capacity)%s", request.model.name, request.model.expected_concurrency,
                ", ".join(f"{s.node.node_id} {s.layers}" for s in plan.stages), plan.prediction.single_tps,
                predict(planned.baseline, planned.num_layers, links=planned.links).single_tps,
                "".join(f"; {n} left out: {why}" for n, why in plan.left_out.items()))
    return Placement(tuple((n,) for n in plan.node_ids), tuple(plan.ranges))


async def preview(registry: ModelRegistry, request: ModelRequest, remeasure: bool = False
                  ) -> coordinator_pb2.PlacementPreview:
    """The plan AddModel makes for ``request`` and its predicted figures, beside the split by capacity
    (``remeasure``: the nodes' profiles are measured again first)."""
    if remeasure:
        for node_id in registry.nodes:
            registry.profiles.forget(node_id)
    p = await _plan(registry, request)
    m = request.model
    return coordinator_pb2.PlacementPreview(
        model=m.name, method="explicit" if p.explicit else "speed", expected_concurrency=m.expected_concurrency,
        plan=figures(p.plan.stages, p.plan.prediction, p.sizes, p.num_layers, p.addresses),
        capacity_split=figures(p.baseline, predict(p.baseline, p.num_layers, REPORTED_CONCURRENCY, p.links), p.sizes,
                               p.num_layers, p.addresses),
        left_out=[coordinator_pb2.LeftOutNode(node_id=n, reason=why) for n, why in p.plan.left_out.items()],
        nodes=[node_info(*p.measured[n]) for n in p.addresses])


def layout_speed(registry: ModelRegistry, load: ModelLoad, num_layers: int, layout: Sequence[tuple[str, LayerRange]],
                 streams: int, star: bool = False) -> float | None:
    """Predicted tokens/s of all ``streams`` together on ``layout`` (node, layers per stage) from the profiles
    measured so far; None when a node's is not known."""
    stages = []
    for node_id, layers in layout:
        speed = registry.profiles.cached(node_id, load)
        if speed is None or node_id not in registry.clients.nodes:
            return None
        stages.append(Stage(replace(speed, rtt_s=registry.clients[node_id].link_round_trip_s), layers))
    links = registry.profiles.known_links(star, registry.config.coordinator.ring_decode)
    return streams / cycle_seconds(stages, num_layers, streams, links)
