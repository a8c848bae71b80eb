"""What a placement will deliver, predicted from the nodes' profiles (shard_node/profile.py) before anything is
loaded (pure). A stage's step for a micro-batch of ``rows`` costs its layers times the node's time per layer at that
many rows, plus the final norm and head on the last stage, plus a fixed software cost per stage (gRPC, the Python
around the forward); a token also crosses the ring of stages once (half the coordinator's round trip to each node,
from the coordinator to the first stage and from the last back, plus each stage-to-stage link's round trip / 2 as the
nodes measured it (``Links``; unknown: the mean of the two nodes' round trips to the coordinator); with forwarding
through the coordinator, every stage's full round trip to it).

One stream: a token takes every stage's step at one row, one after the other. ``c`` streams: the engine runs one
lane per stage, each carrying ceil(c / lanes) rows; a lane's step takes the sum of the stages' steps at that many
rows, and a stage serves every busy lane in turn, so a cycle of all lanes takes the larger of one lane's step and
the busiest stage's steps for all lanes. Tokens per second = streams / cycle.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from protos.data_structures import LayerRange

STAGE_OVERHEAD_S = 0.0005  # per stage and step: the node's protobuf and Python around the forward
TOKEN_OVERHEAD_S = 0.010  # per step, whatever the stages: the coordinator's loop, its gRPC, the client's stream
# (measured with make bench's placement section on a 2-core Xeon: 12-13 ms per token on one stage and on three; the
# coordinator and clients share the nodes' cores there)


@dataclass(frozen=True)
class NodeSpeed:
    """One node's profile for one model format, and the coordinator's round trip to it."""

    node_id: str
    decode_s: dict[int, float]  # rows -> seconds per layer of one decode step
    head_s: dict[int, float]  # rows -> seconds of the final norm + LM head
    prefill_token_s: float = 0.0  # seconds per layer per prompt token
    rtt_s: float = 0.0

    def layer_seconds(self, rows: int) -> float:
        return _interpolate(self.decode_s, rows)

    def head_seconds(self, rows: int) -> float:
        return _interpolate(self.head_s, rows)


def _interpolate(points: dict[int, float], rows: int) -> float:
    """Linear between measured sizes, proportional beyond the largest, the smallest's below it."""
    if not points:
        raise ValueError("a profile without figures")
    sizes = sorted(points)
    if rows <= sizes[0]:
        return points[sizes[0]]
    for lo, hi in zip(sizes, sizes[1:]):
        if rows <= hi:
            return points[lo] + (points[hi] - points[lo]) * (rows - lo) / (hi - lo)
    return points[sizes[-1]] * rows / sizes[-1]


@dataclass(frozen=True)
class Links:
    """How hidden states travel: round trips between nodes (a, b) -> seconds, as node a measured them, and whether
    they go through the coordinator instead (``star``)."""

    between: Mapping[tuple[str, str], float] = field(default_factory=dict)
    star: bool = False
    ring_decode: bool = True  # coordinator.ring_decode: one stream's token goes from the last stage to the first

    def hop(self, a: NodeSpeed, b: NodeSpeed) -> float:
        """The round trip from ``a`` to ``b``."""
        rtt = self.between.get((a.node_id, b.node_id))
        return rtt if rtt is not None else (a.rtt_s + b.rtt_s) / 2

    def network_seconds(self, nodes: Sequence[NodeSpeed], alone: bool = False) -> float:
        """A step's time on the wire through ``nodes`` in order (``alone``: one lane decoding by itself, which
        with ring decode goes round the stages without the coordinator)."""
        if not nodes:
            return 0.0
        if self.star:
            return sum(n.rtt_s for n in nodes)
        hops = sum(self.hop(a, b) for a, b in zip(nodes, nodes[1:]))
        if alone and self.ring_decode and len(nodes) > 1:
            return (hops + self.hop(nodes[-1], nodes[0])) / 2
        return (nodes[0].rtt_s + nodes[-1].rtt_s + hops) / 2


DIRECT = Links()  # stage to stage, no node-to-node round trip measured


@dataclass(frozen=True)
class Stage:
    node: NodeSpeed
    layers: LayerRange


@dataclass(frozen=True)
class Prediction:
    """Tokens per second of a placement: one stream, and all streams together at each concurrency."""

    single_tps: float
    aggregate_tps: dict[int, float] = field(default_factory=dict)
    step_seconds: list[float] = field(default_factory=list)  # per stage, one row (what slow-node checks compare)


def stage_seconds(stage: Stage, rows: int, num_layers: int) -> float:
    head = stage.node.head_seconds(rows) if stage.layers.end == num_layers else 0.0
    return stage.layers.length * stage.node.layer_seconds(rows) + head + STAGE_OVERHEAD_S


def ring_seconds(stages: Sequence[Stage], links: Links = DIRECT, alone: bool = False) -> float:
    """A step's network and fixed cost: the wire through the stages, and the per-step overhead."""
    return links.network_seconds([s.node for s in stages], alone) + TOKEN_OVERHEAD_S


def cycle_seconds(stages: Sequence[Stage], num_layers: int, streams: int, links: Links = DIRECT) -> float:
    """Seconds for every stream to get one more token."""
    lanes = min(streams, len(stages))
    rows = math.ceil(streams / lanes)
    steps = [stage_seconds(s, rows, num_layers) for s in stages]
    return max(sum(steps) + ring_seconds(stages, links, alone=streams == 1), lanes * max(steps))


def predict(stages: Sequence[Stage], num_layers: int, concurrency: Sequence[int] = (8, 32), links: Links = DIRECT
            ) -> Prediction:
    single = 1 / cycle_seconds(stages, num_layers, 1, links)
    return Prediction(single, {c: c / cycle_seconds(stages, num_layers, c, links) for c in concurrency},
                      [stage_seconds(s, 1, num_layers) for s in stages])
