"""Which nodes hold a model and which layers each, chosen for speed (pure): the contiguous split that minimises the
predicted seconds per token at the expected concurrency (coordinator/speed_model.py), under each node's memory.

For a set of nodes in a given order and ``c`` streams, a token's cycle is the larger of one lane's step (the sum of
the stages' steps) and the busiest stage's steps for every lane. For a bound B on a stage's step, each node can take
at most the layers that fit under B (and its memory); the least sum under that bound gives the fastest nodes the most
layers. Trying every bound that some stage can have finds the best split exactly. Every arrangement of the nodes
(up to PERMUTED_NODES of them; beyond, their given order and every subset) is tried, so a node that would make the
model slower is left out, with the predicted time with and without it as the reason. A plan with more stages has to
win by STAGE_MARGIN per stage.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from coordinator.speed_model import (
    DIRECT,
    STAGE_OVERHEAD_S,
    TOKEN_OVERHEAD_S,
    Links,
    NodeSpeed,
    Prediction,
    Stage,
    predict,
)
from protos.data_structures import LayerRange

PERMUTED_NODES = 5  # with more nodes only their given order is tried (still every subset of it)
STAGE_MARGIN = 0.03  # a plan with one stage more must be predicted this much faster: a hop costs more than half its
# round trip in practice (make bench's latency table: 3.6-4.4 one-way delays per 3-hop step, 3 modeled), and a
# split that wins by noise in the profiles should not be taken

MaxLayers = Callable[[str, bool, bool], int]  # (node, holds the first stage, holds the last) -> layers it can hold


class NoPlan(ValueError):
    """No set of the nodes can hold the model."""


@dataclass(frozen=True)
class SpeedPlan:
    stages: tuple[Stage, ...]
    seconds_per_token: float  # the objective: seconds per token of one stream at the expected concurrency
    prediction: Prediction
    left_out: dict[str, str] = field(default_factory=dict)  # node -> why it holds nothing

    @property
    def ranges(self) -> list[LayerRange]:
        return [s.layers for s in self.stages]

    @property
    def node_ids(self) -> list[str]:
        return [s.node.node_id for s in self.stages]


def _split(num_layers: int, nodes: Sequence[NodeSpeed], caps: list[int], streams: int, links: Links
           ) -> tuple[list[int], float]:
    """The layer counts (in node order) with the least cycle for ``streams``, and that cycle; ([], inf) if none."""
    n = len(nodes)
    if n > num_layers or min(caps) < 1 or sum(caps) < num_layers:
        return [], math.inf
    lanes = min(streams, n)
    rows = math.ceil(streams / lanes)
    per_layer = [node.layer_seconds(rows) for node in nodes]
    fixed = [STAGE_OVERHEAD_S + (node.head_seconds(rows) if i == n - 1 else 0.0) for i, node in enumerate(nodes)]
    ring = links.network_seconds(nodes, alone=streams == 1) + TOKEN_OVERHEAD_S
    bounds = sorted({fixed[i] + k * per_layer[i] for i in range(n) for k in range(1, caps[i] + 1)})
    if lanes == 1:  # one stream: only the sum counts, and the loosest bound (memory alone) gives the least
        bounds = bounds[-1:]
    best: tuple[list[int], float] = ([], math.inf)
    for bound in bounds:
        most = [min(caps[i], int((bound - fixed[i]) / per_layer[i] + 1e-9)) if per_layer[i] > 0 else caps[i]
                for i in range(n)]
        if min(most) < 1 or sum(most) < num_layers:
            continue
        counts = [1] * n
        for i in sorted(range(n), key=lambda j: per_layer[j]):  # the rest to the fastest first
            counts[i] += min(most[i] - 1, num_layers - sum(counts))
        steps = [fixed[i] + counts[i] * per_layer[i] for i in range(n)]
        cycle = max(sum(steps) + ring, lanes * max(steps)) if lanes > 1 else sum(steps) + ring
        if cycle < best[1] - 1e-12:
            best = (counts, cycle)
    return best


def _arrangements(nodes: Sequence[NodeSpeed]) -> list[tuple[NodeSpeed, ...]]:
    if len(nodes) <= PERMUTED_NODES:
        return [p for k in range(1, len(nodes) + 1) for p in itertools.permutations(nodes, k)]
    return [c for k in range(1, len(nodes) + 1) for c in itertools.combinations(nodes, k)]


def _stages(arrangement: Sequence[NodeSpeed], counts: list[int]) -> tuple[Stage, ...]:
    out, start = [], 0
    for node, count in zip(arrangement, counts):
        out.append(Stage(node, LayerRange(start, start + count)))
        start += count
    return tuple(out)


def plan_by_speed(num_layers: int, nodes: Sequence[NodeSpeed], max_layers: MaxLayers, concurrency: int = 1,
                  report: Sequence[int] = (8, 32), links: Links = DIRECT) -> SpeedPlan:
    """The fastest placement of ``num_layers`` over some of ``nodes`` at ``concurrency`` streams."""
    if not nodes:
        raise NoPlan("no node to place the model on")
    best: tuple[float, float, tuple[Stage, ...]] = (math.inf, math.inf, ())  # (score, cycle, stages)
    best_with: dict[str, float] = {}  # node -> the best cycle of a plan that uses it
    for arrangement in _arrangements(nodes):
        last = len(arrangement) - 1
        caps = [max_layers(node.node_id, i == 0, i == last) for i, node in enumerate(arrangement)]
        counts, cycle = _split(num_layers, arrangement, caps, concurrency, links)
        if not counts:
            continue
        for node in arrangement:
            best_with[node.node_id] = min(best_with.get(node.node_id, math.inf), cycle)
        score = cycle * (1 + STAGE_MARGIN) ** last  # each stage more must win by the margin
        if score < best[0] - 1e-12 or (score <= best[0] + 1e-12 and len(arrangement) < len(best[2])):
            best = (score, cycle, _stages(arrangement, counts))
    if not best[2]:
        raise NoPlan(f"the {len(nodes)} node(s) cannot hold the model's {num_layers} layers together (memory)")
    _, cycle, stages = best
    per_token = cycle / concurrency
    used = {s.node.node_id for s in stages}
    left_out = {}
    for node in nodes:
        if node.node_id in used:
            continue
        with_it = best_with.get(node.node_id)
        left_out[node.node_id] = (
            "it cannot hold a layer of this model (memory)" if with_it is None else
            f"with it the best plan predicts {with_it / concurrency * 1e3:.1f} ms per token at {concurrency} "
            f"stream(s), without it {per_token * 1e3:.1f} ms" + (
                f" (a stage more has to win by {STAGE_MARGIN:.0%})" if with_it < cycle else ""))
    return SpeedPlan(stages, per_token, predict(stages, num_layers, report, links), left_out)
