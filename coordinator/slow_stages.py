"""Slow-stage detection: a stage whose measured compute per micro-batch stays well above what its node's profile
predicts for it (coordinator/speed_model.py). The rule: over the last WINDOW micro-batches of the stage (at least
MIN_SECONDS of them), the measured compute is more than SLOWDOWN times the predicted one; reported once when it
starts (a log line and an event of the node in /api/cluster) and once when it ends. Another process on the node's
cores, a CPU quota tightened after the profile, thermal throttling or swapping all show this way. Pure but for the
report callback; stages without a profile are not judged."""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from coordinator.speed_model import NodeSpeed
from protos.data_structures import LayerRange

if TYPE_CHECKING:
    from coordinator.engine import ModelEngine
    from coordinator.profile_book import ProfileBook

logger = logging.getLogger(__name__)
SLOWDOWN = 2.0  # measured / predicted above this, over the window, is slow
WINDOW = 20  # micro-batches judged together
MIN_SECONDS = 5.0  # and the window spans at least this long (a burst of a few batches is not a trend)

SpeedOf = Callable[[str], NodeSpeed | None]  # node id -> its profile for this model's format (None: not measured)
Report = Callable[[str, str], None]  # (node id, what) -> an event of that node
OnSlow = Callable[[str], None]  # node id -> what to do when it turns slow (coordinator.auto_rebalance)


@dataclass
class _Stage:
    ratios: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=WINDOW))  # (time, measured/pred)
    slow: bool = False


class SlowStages:
    def __init__(self, model: str, num_layers: int, speed_of: SpeedOf, report: Report,
                 clock: Callable[[], float] = time.monotonic, on_slow: OnSlow | None = None) -> None:
        self.model, self.num_layers = model, num_layers
        self.speed_of, self.report, self.clock, self.on_slow = speed_of, report, clock, on_slow
        self._stages: dict[str, _Stage] = {}

    def slowdown(self, node_id: str) -> float:
        """The stage's measured / predicted compute over its window (0 when not judged)."""
        ratios = self._stages.get(node_id)
        return sum(r for _, r in ratios.ratios) / len(ratios.ratios) if ratios and ratios.ratios else 0.0

    def observe(self, node_id: str, layers: LayerRange, rows: int, seconds: float) -> None:
        """One micro-batch of ``rows`` rows took ``seconds`` of compute on this stage."""
        speed = self.speed_of(node_id)
        if speed is None or rows < 1 or seconds <= 0:
            return
        predicted = layers.length * speed.layer_seconds(rows) + (
            speed.head_seconds(rows) if layers.end == self.num_layers else 0.0)
        if predicted <= 0:
            return
        stage = self._stages.setdefault(node_id, _Stage())
        stage.ratios.append((self.clock(), seconds / predicted))
        full = len(stage.ratios) == WINDOW and stage.ratios[-1][0] - stage.ratios[0][0] >= MIN_SECONDS
        ratio = self.slowdown(node_id)
        if full and not stage.slow and ratio > SLOWDOWN:
            stage.slow = True
            self._say(node_id, f"slow for {self.model}: layers {layers.start}-{layers.end - 1} take {ratio:.1f}x the "
                               f"time its profile predicts (over its last {WINDOW} micro-batches)")
            if self.on_slow is not None:
                self.on_slow(node_id)
        elif stage.slow and ratio <= SLOWDOWN:
            stage.slow = False
            self._say(node_id, f"back to its profile's speed for {self.model} ({ratio:.1f}x)")

    def _say(self, node_id: str, what: str) -> None:
        logger.warning("node %s %s", node_id, what)
        self.report(node_id, what)


def watch_speed(engine: ModelEngine, profiles: ProfileBook, report: Report, on_slow: OnSlow | None = None) -> None:
    """Judges ``engine``'s stages against their nodes' profiles for its format, where they were measured."""
    load = engine.replicas.model_load
    if load is None:
        return
    engine.publisher.slow = SlowStages(engine.name, engine.meta.num_layers,
                                       lambda node_id: profiles.cached(node_id, load), report, on_slow=on_slow)
