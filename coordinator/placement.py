"""Where a model added at runtime goes: contiguous layer ranges over the nodes with free memory (pure).

Each node has a memory budget (weights + KV budgets of the shards it holds; ``None`` = no limit). A
stage holds its layers' weights and KV budget, plus the embedding on the first stage and the final
norm and LM head on the last. With ``replicas`` = R, the nodes are taken R at a time in order, each
group holding one range. Without limits the split balances compute (the LM head counts as the layers
of decode work it costs); with limits, layers go out in proportion to what each stage can hold, never
more than that. If the model cannot fit now, ``DoesNotFit`` says how much is missing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from coordinator.partition import partition_layers
from protos.data_structures import LayerRange


class DoesNotFit(ValueError):
    """Not enough free memory (or nodes) for the model now; the message has the numbers."""


@dataclass(frozen=True)
class ModelSizes:
    """Bytes of a model's parts at the dtype and KV budget asked for (measured by the nodes)."""

    layer_bytes: int  # weights of one transformer layer
    kv_bytes_per_layer: int  # the KV budget of one layer
    first_extra_bytes: int  # the embedding (first stage)
    last_extra_bytes: int  # final norm + LM head (+ embedding when tied), last stage

    @property
    def per_layer(self) -> int:
        return self.layer_bytes + self.kv_bytes_per_layer

    def stage_bytes(self, layers: LayerRange, num_layers: int) -> int:
        extra = (self.first_extra_bytes if layers.start == 0 else 0) + \
                (self.last_extra_bytes if layers.end == num_layers else 0)
        return layers.length * self.per_layer + extra


@dataclass(frozen=True)
class NodeRoom:
    node_id: str
    free_bytes: int | None  # None: no memory budget


@dataclass(frozen=True)
class Placement:
    stages: tuple[tuple[str, ...], ...]  # replicas' node ids per stage
    ranges: tuple[LayerRange, ...]


def place(num_layers: int, sizes: ModelSizes, rooms: list[NodeRoom], replicas: int = 1,
          head_cost: float = 0.0) -> Placement:
    if replicas < 1:
        raise ValueError(f"replicas must be >= 1, got {replicas}")
    fits_a_layer = [r for r in rooms if r.free_bytes is None or r.free_bytes >= sizes.per_layer]
    num_stages = min(len(fits_a_layer) // replicas, num_layers)
    if num_stages == 0:
        raise DoesNotFit(f"{replicas} node(s) with room for at least one layer "
                         f"({sizes.per_layer / 2**20:.0f} MiB) are needed; {len(fits_a_layer)} have it")
    groups = [fits_a_layer[i * replicas:(i + 1) * replicas] for i in range(num_stages)]
    free = [min((r.free_bytes for r in g if r.free_bytes is not None), default=None) for g in groups]
    if all(f is None for f in free):
        ranges = partition_layers(num_layers, [1.0] * num_stages, head_cost)
    else:
        ranges = _bounded_split(num_layers, sizes, free)
    for group, rng, room in zip(groups, ranges, free):
        need = sizes.stage_bytes(rng, num_layers)
        if room is not None and need > room:
            raise DoesNotFit(f"layers {rng} need {need / 2**20:.0f} MiB but {'/'.join(r.node_id for r in group)} "
                             f"have {room / 2**20:.0f} MiB free")
    return Placement(tuple(tuple(r.node_id for r in g) for g in groups), tuple(ranges))


def fit_ranges(num_layers: int, sizes: ModelSizes, free: list[int | None], capacities: list[float],
               head_cost: float = 0.0) -> list[LayerRange]:
    """Ranges for stages already chosen (a configured model): the compute-balanced split when every stage fits
    its free bytes (``None`` = no limit); else the split whose busiest stage (layers + LM head cost, over its
    capacity) is least busy among those where every stage holds no more than it has room for."""
    ranges = partition_layers(num_layers, capacities, head_cost)
    if all(f is None or sizes.stage_bytes(r, num_layers) <= f for r, f in zip(ranges, free)):
        return ranges
    caps = _stage_caps(num_layers, sizes, free)
    n = len(caps)
    head = [0.0] * (n - 1) + [head_cost]
    busy = [lambda c, i=i: (c + head[i]) / capacities[i] for i in range(n)]
    counts: list[int] = []
    for target in sorted({busy[i](k) for i in range(n) for k in range(1, caps[i] + 1)}):
        counts = [max(1, min(caps[i], math.floor(target * capacities[i] - head[i] + 1e-9))) for i in range(n)]
        if sum(counts) >= num_layers:
            break
    while sum(counts) > num_layers:  # a little over: take from the busiest stages
        i = max((i for i in range(n) if counts[i] > 1), key=lambda i: busy[i](counts[i]))
        counts[i] -= 1
    return _ranges(counts)


def _stage_caps(num_layers: int, sizes: ModelSizes, free: list[int | None]) -> list[int]:
    """How many layers each stage can hold (at most all of them); DoesNotFit when they cannot hold the model."""
    n = len(free)
    caps = []
    for i, room in enumerate(free):
        extra = (sizes.first_extra_bytes if i == 0 else 0) + (sizes.last_extra_bytes if i == n - 1 else 0)
        caps.append(num_layers if room is None else min(num_layers, max(0, (room - extra) // sizes.per_layer)))
    if sum(caps) < num_layers or any(c < 1 for c in caps):
        total_free = sum(f for f in free if f is not None)
        need = num_layers * sizes.per_layer + sizes.first_extra_bytes + sizes.last_extra_bytes
        raise DoesNotFit(f"the model needs about {need / 2**20:.0f} MiB (weights + KV budget) across its stages; "
                         f"the {n} stage(s) available have {total_free / 2**20:.0f} MiB free")
    return caps


def _ranges(counts: list[int]) -> list[LayerRange]:
    out, start = [], 0
    for c in counts:
        out.append(LayerRange(start, start + c))
        start += c
    return out


def _bounded_split(num_layers: int, sizes: ModelSizes, free: list[int | None]) -> list[LayerRange]:
    """Layers in proportion to what each stage can hold, never more than it can hold."""
    caps = _stage_caps(num_layers, sizes, free)
    n = len(caps)
    quotas = [num_layers * c / sum(caps) for c in caps]
    counts = [max(1, min(caps[i], math.floor(q))) for i, q in enumerate(quotas)]
    order = sorted(range(n), key=lambda i: -(quotas[i] - math.floor(quotas[i])))
    while sum(counts) < num_layers:  # hand out the rest where there is room, largest remainder first
        i = next(i for i in order + list(range(n)) if counts[i] < caps[i])
        counts[i] += 1
    while sum(counts) > num_layers:
        i = max(range(n), key=lambda i: counts[i])
        counts[i] -= 1
    return _ranges(counts)
