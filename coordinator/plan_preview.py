"""A model's placement chosen for speed, and its preview (POST /api/models?dry_run=true): the nodes' speed profiles
(measured by each node for the model's shape and format, kept per node and format), their memory, the coordinator's
round trip to each, and the split that minimises the predicted time per token (coordinator/speed_placement.py),
beside today's split by configured capacity over the same nodes. Nothing is loaded."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import grpc

from coordinator.model_meta import read_model_meta
from coordinator.node_client import ModelLoad, NodeClients
from coordinator.node_names import RegistryError
from coordinator.partition import partition_layers
from coordinator.placement import DoesNotFit, ModelSizes, Placement, place
from coordinator.sizing import measure, model_load
from coordinator.speed_model import Links, NodeSpeed, Prediction, Stage, cycle_seconds, predict
from coordinator.speed_placement import MaxLayers, NoPlan, SpeedPlan, plan_by_speed
from protos import coordinator_pb2, shard_pb2, wire
from protos.data_structures import LayerRange

if TYPE_CHECKING:
    from coordinator.registry import ModelRegistry, ModelRequest

logger = logging.getLogger(__name__)
PROFILE_TTL_S = 600.0  # a node's profile for a format is measured again after this long (or on demand)
REPORTED_CONCURRENCY = (8, 32)


@dataclass
class _Measured:
    profile: shard_pb2.NodeProfile
    at: float  # time.monotonic()


class ProfileBook:
    """The nodes' profiles, per node and model format, measured when first needed and again after PROFILE_TTL_S."""

    def __init__(self) -> None:
        self._book: dict[tuple[str, str, str, str, str], _Measured] = {}
        self._links: dict[tuple[str, str], tuple[float, float, str]] = {}  # (a, b) -> (rtt, when, error) as a measured

    @staticmethod
    def _key(node_id: str, load: ModelLoad) -> tuple[str, str, str, str, str]:
        return node_id, load.model_path, load.dtype, load.quantization, load.device

    def of_node(self, node_id: str, rtt_s: float) -> list[coordinator_pb2.NodeSpeedInfo]:
        """What is known of a node's speed, per model format (GET /api/cluster)."""
        now = time.monotonic()
        return [node_info(to_speed(e.profile, rtt_s), e.profile, now - e.at, format_of(k))
                for k, e in self._book.items() if k[0] == node_id]

    def cached(self, node_id: str, load: ModelLoad) -> NodeSpeed | None:
        """The node's speed for the format if it was measured (nothing is measured here)."""
        entry = self._book.get(self._key(node_id, load))
        return None if entry is None else to_speed(entry.profile, 0.0)

    def forget(self, node_id: str) -> None:
        """A node that joined again, or that asked to be measured again."""
        self._book = {k: v for k, v in self._book.items() if k[0] != node_id}
        self._links = {k: v for k, v in self._links.items() if node_id not in k}

    async def links(self, clients: NodeClients, node_ids: Sequence[str], star: bool = False) -> Links:
        """The round trips between ``node_ids`` (each node measures its links to the others, again after
        PROFILE_TTL_S; none with ``star``: hidden states go through the coordinator then)."""
        for a in node_ids if not star and len(node_ids) > 1 else ():
            now = time.monotonic()
            stale = {clients[b].node.address: b for b in node_ids
                     if b != a and ((a, b) not in self._links or now - self._links[(a, b)][1] > PROFILE_TTL_S)}
            if not stale:
                continue
            try:
                measured = await clients[a].measure_links(list(stale))
            except grpc.aio.AioRpcError as e:
                logger.warning("node %s could not measure its links: %s", a, e.details())
                continue
            for link in measured:
                if (b := stale.get(link.address)) is not None:
                    self._links[(a, b)] = (math.inf if link.error else link.rtt_seconds, time.monotonic(), link.error)
                    if link.error:
                        logger.warning("node %s cannot reach node %s (%s): %s", a, b, link.address, link.error)
        return self.known_links(star)

    def known_links(self, star: bool = False) -> Links:
        """The links measured so far (an unreachable pair: infinite, so no plan puts them next to each other)."""
        return Links({k: v[0] for k, v in self._links.items()}, star)

    def links_of(self, node_id: str) -> list[coordinator_pb2.PeerLink]:
        """A node's links as it measured them (GET /api/cluster)."""
        now = time.monotonic()
        return [coordinator_pb2.PeerLink(node_id=b, rtt_ms=-1.0 if err else rtt * 1e3, measured_seconds_ago=now - at,
                                         error=err) for (a, b), (rtt, at, err) in sorted(self._links.items())
                if a == node_id]

    async def speeds(self, clients: NodeClients, node_ids: Sequence[str], load: ModelLoad
                     ) -> dict[str, tuple[NodeSpeed, shard_pb2.NodeProfile, float, str]]:
        """Each node's speed (its profile and its age in seconds), measuring the missing ones one after the other:
        nodes may share a machine's cores, and one measuring must not slow another's figures."""
        out = {}
        for node_id in node_ids:
            key = self._key(node_id, load)
            entry = self._book.get(key)
            if entry is None or time.monotonic() - entry.at > PROFILE_TTL_S:
                entry = self._book[key] = _Measured(await clients[node_id].profile(load.shard(LayerRange(0, 1))),
                                                    time.monotonic())
                logger.info("node %s profiled for %s (%s, %s) in %.1f s", node_id, load.model, load.dtype,
                            load.quantization, entry.profile.measured_seconds)
            rtt = clients[node_id].link_round_trip_s
            out[node_id] = (to_speed(entry.profile, rtt), entry.profile, time.monotonic() - entry.at, format_of(key))
        return out


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


def to_speed(profile: shard_pb2.NodeProfile, rtt_s: float) -> NodeSpeed:
    return NodeSpeed(profile.node_id, {t.rows: t.seconds for t in profile.decode},
                     {t.rows: t.seconds for t in profile.head}, profile.prefill_token_seconds, rtt_s)


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
    links = await registry.profiles.links(registry.clients, candidates, star=m.forwarding == "star")
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
    return streams / cycle_seconds(stages, num_layers, streams, registry.profiles.known_links(star))


def format_of(key: tuple[str, str, str, str, str]) -> str:
    _, path, dtype, quantization, device = key
    return f"{path.rstrip('/').rsplit('/', 1)[-1]} {dtype} {quantization} {device}"


def node_info(speed: NodeSpeed, profile: shard_pb2.NodeProfile, age_s: float, fmt: str = ""
              ) -> coordinator_pb2.NodeSpeedInfo:
    return coordinator_pb2.NodeSpeedInfo(
        node_id=speed.node_id, layer_ms=speed.layer_seconds(1) * 1e3, layer_ms_32=speed.layer_seconds(32) * 1e3,
        head_ms=speed.head_seconds(1) * 1e3, prefill_token_ms=speed.prefill_token_s * 1e3, rtt_ms=speed.rtt_s * 1e3,
        threads=profile.threads, kernel=profile.kernel, measured_seconds_ago=age_s,
        memory_free_bytes=profile.memory_free_bytes, format=fmt)
