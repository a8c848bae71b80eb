"""Where a model's time went over the last few minutes: per stage the share of wall time it computed, per link
the bytes per second it carried and its mean round trip.

``TrafficHistory`` gathers what ``metrics.observe_stage`` / ``observe_link`` report between two samples; every
``interval_s`` the sampler (``run_sampler``, a coordinator background task) turns that into one point per stage
and per link, and keeps the last ``points`` of them (fixed-size deques). All series of a model have the same
length and end at the newest point, so a stage or link that appears later is padded at the start (0, or None for
a round trip). A series that stayed empty for the whole window leaves the history. Pure logic with an injected
clock; the coordinator's event loop is the only caller (no locks).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from protos import coordinator_pb2

INTERVAL_S = 2.0
POINTS = 150  # 5 minutes at 2 s

LinkKey = tuple[str, str]  # (src, dst): node ids, or "coordinator"


@dataclass
class StageSeries:
    busy_share: deque[float]  # 0..1 per interval, oldest first
    busy_s: float = 0.0  # reported since the last sample


@dataclass
class LinkSeries:
    bytes_per_s: deque[float]
    rtt_ms: deque[float | None]  # mean round trip of the interval; None when none was measured
    nbytes: int = 0  # reported since the last sample
    rtt_sum_s: float = 0.0
    rtt_count: int = 0


@dataclass
class ModelTraffic:
    stages: dict[str, StageSeries] = field(default_factory=dict)
    links: dict[LinkKey, LinkSeries] = field(default_factory=dict)
    points: int = 0  # points every series of this model holds (at most the window)


@dataclass(frozen=True)
class StageHistory:
    node: str
    busy_share: tuple[float, ...]


@dataclass(frozen=True)
class LinkHistory:
    src: str
    dst: str
    bytes_per_s: tuple[float, ...]
    rtt_ms: tuple[float | None, ...]


@dataclass(frozen=True)
class ModelHistory:
    interval_s: float
    stages: tuple[StageHistory, ...]
    links: tuple[LinkHistory, ...]


class TrafficHistory:
    def __init__(self, interval_s: float = INTERVAL_S, points: int = POINTS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_s = interval_s
        self.points = points
        self.clock = clock
        self.models: dict[str, ModelTraffic] = {}
        self._last_sample = clock()

    def _model(self, model: str) -> ModelTraffic:
        return self.models.setdefault(model, ModelTraffic())

    def add_stage(self, model: str, node: str, busy_s: float) -> None:
        m = self._model(model)
        stage = m.stages.get(node)
        if stage is None:
            stage = m.stages[node] = StageSeries(deque([0.0] * m.points, maxlen=self.points))
        stage.busy_s += max(0.0, busy_s)

    def add_link(self, model: str, src: str, dst: str, nbytes: int, rtt_s: float | None) -> None:
        m = self._model(model)
        link = m.links.get((src, dst))
        if link is None:
            link = m.links[(src, dst)] = LinkSeries(deque([0.0] * m.points, maxlen=self.points),
                                                    deque([None] * m.points, maxlen=self.points))
        link.nbytes += max(0, nbytes)
        if rtt_s is not None and rtt_s >= 0:
            link.rtt_sum_s += rtt_s
            link.rtt_count += 1

    def restart_interval(self) -> None:
        """The next point covers from now on (the sampler starts: the time before it is not an interval)."""
        self._last_sample = self.clock()

    def sample(self) -> None:
        """One point per stage and link of every model: what was reported since the previous sample."""
        now = self.clock()
        elapsed = now - self._last_sample
        if elapsed <= 0:
            return
        self._last_sample = now
        for m in self.models.values():
            for stage in m.stages.values():
                stage.busy_share.append(min(1.0, stage.busy_s / elapsed))
                stage.busy_s = 0.0
            for link in m.links.values():
                link.bytes_per_s.append(link.nbytes / elapsed)
                link.rtt_ms.append(1000.0 * link.rtt_sum_s / link.rtt_count if link.rtt_count else None)
                link.nbytes, link.rtt_sum_s, link.rtt_count = 0, 0.0, 0
            m.points = min(self.points, m.points + 1)
            self._drop_idle(m)

    def _drop_idle(self, m: ModelTraffic) -> None:
        """Series that were empty for a whole window (a node that left the route) stop being shown."""
        if m.points < self.points:
            return
        for node in [n for n, s in m.stages.items() if s.busy_s == 0 and not any(s.busy_share)]:
            del m.stages[node]
        for key in [k for k, s in m.links.items()
                    if s.nbytes == 0 and not s.rtt_count and not any(s.bytes_per_s) and not any(s.rtt_ms)]:
            del m.links[key]

    def history(self, model: str) -> ModelHistory | None:
        """The model's series, oldest point first; None when nothing was reported for it."""
        m = self.models.get(model)
        if m is None:
            return None
        stages = tuple(StageHistory(node, tuple(s.busy_share)) for node, s in m.stages.items())
        links = tuple(LinkHistory(src, dst, tuple(s.bytes_per_s), tuple(s.rtt_ms)) for (src, dst), s in m.links.items())
        return ModelHistory(self.interval_s, stages, links)

    def forget_model(self, model: str) -> None:
        self.models.pop(model, None)

    def forget_node(self, node: str) -> None:
        for m in self.models.values():
            m.stages.pop(node, None)
            for key in [k for k in m.links if node in k]:
                del m.links[key]


NOT_MEASURED_MS = -1.0  # a round trip on the wire when none was measured (proto3 has no null)


def history_to_proto(model: str, history: ModelHistory) -> coordinator_pb2.TrafficHistory:
    reply = coordinator_pb2.TrafficHistory(model=model, interval_s=history.interval_s)
    for stage in history.stages:
        reply.stages.add(node_id=stage.node, busy_share=stage.busy_share)
    for link in history.links:
        reply.links.add(src=link.src, dst=link.dst, bytes_per_s=link.bytes_per_s,
                        rtt_ms=[NOT_MEASURED_MS if ms is None else ms for ms in link.rtt_ms])
    return reply


async def run_sampler(history: TrafficHistory,
                      sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
    """Samples ``history`` every ``interval_s`` until cancelled (the coordinator's shutdown cancels it)."""
    history.restart_interval()
    while True:
        await sleep(history.interval_s)
        history.sample()
