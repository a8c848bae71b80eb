"""Splitting a model's layers into contiguous ranges across nodes (a pure function)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from protos.data_structures import LayerRange


class PartitionError(ValueError):
    """The layers cannot be split as asked."""


def partition_layers(num_layers: int, capacities: Sequence[float], head_cost: float = 0.0) -> list[LayerRange]:
    """Contiguous ranges giving each node work in proportion to its capacity (largest remainder, >= 1 layer each).

    ``head_cost`` is the last stage's LM head in layer-equivalents of decode work (a 49152 x 576 head
    costs as much as 8 SmolLM2 layers per token), so the last node gets that many fewer layers and no
    stage becomes the pipeline's bottleneck.
    """
    num_nodes = len(capacities)
    if num_nodes == 0:
        raise PartitionError("cannot split layers across zero nodes")
    if num_layers < 1:
        raise PartitionError(f"a model needs at least one layer, got {num_layers}")
    if num_nodes > num_layers:
        raise PartitionError(
            f"{num_nodes} nodes but only {num_layers} layers: every node needs at least one layer; "
            f"use at most {num_layers} nodes for this model"
        )
    if any(not math.isfinite(c) or c <= 0 for c in capacities):
        raise PartitionError(f"node capacities must be positive numbers, got {list(capacities)}")
    if not math.isfinite(head_cost) or head_cost < 0:
        raise PartitionError(f"head_cost must be a number >= 0, got {head_cost}")

    # Work shares in proportion to capacity; the last node's share includes the head.
    work = [c * (num_layers + head_cost) / sum(capacities) for c in capacities]
    work[-1] = max(work[-1] - head_cost, 1e-9)
    # Every node gets one layer; the rest are shared in proportion to the layer work left to each.
    spare = num_layers - num_nodes
    total = sum(work)
    quotas = [spare * w / total for w in work]
    counts = [1 + math.floor(q) for q in quotas]
    leftover = num_layers - sum(counts)
    by_remainder = sorted(range(num_nodes), key=lambda i: (-(quotas[i] - math.floor(quotas[i])), i))
    for i in by_remainder[:leftover]:
        counts[i] += 1

    ranges = []
    start = 0
    for count in counts:
        ranges.append(LayerRange(start, start + count))
        start += count
    assert start == num_layers
    return ranges


def check_explicit_ranges(num_layers: int, ranges: Sequence[LayerRange]) -> list[LayerRange]:
    """Explicit ranges must cover [0, num_layers) contiguously."""
    if not ranges:
        raise PartitionError("no layer ranges given")
    if ranges[0].start != 0:
        raise PartitionError(f"the first range must start at layer 0, got {ranges[0]}")
    for prev, cur in zip(ranges, ranges[1:]):
        if cur.start != prev.end:
            raise PartitionError(f"range {cur} must start where {prev} ends; gaps and overlaps are not allowed")
    if ranges[-1].end != num_layers:
        raise PartitionError(f"the last range must end at layer {num_layers} (the model has {num_layers} layers), "
                             f"got {ranges[-1]}")
    return list(ranges)
