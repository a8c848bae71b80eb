"""Slow-stage detection against the node's profile (pure): reported once when a stage stays above twice its predicted
compute over a window of micro-batches spanning seconds, once when it recovers, never on a short burst or without a
profile."""

from __future__ import annotations

from coordinator.slow_stages import MIN_SECONDS, WINDOW, SlowStages
from coordinator.speed_model import NodeSpeed
from protos.data_structures import LayerRange

LAYERS = LayerRange(0, 10)
SPEED = NodeSpeed("n1", {1: 0.001, 8: 0.002}, {1: 0.004})  # 10 layers at one row: 10 ms predicted


def watch() -> tuple[SlowStages, list[tuple[str, str]], list[float]]:
    said: list[tuple[str, str]] = []
    now = [0.0]
    return SlowStages("m", 30, lambda n: SPEED if n == "n1" else None, lambda n, w: said.append((n, w)),
                      clock=lambda: now[0]), said, now


def test_a_stage_three_times_slower_than_its_profile_is_reported_once_and_its_recovery_too() -> None:
    slow, said, now = watch()
    for _ in range(WINDOW * 2):
        now[0] += MIN_SECONDS / WINDOW * 1.5
        slow.observe("n1", LAYERS, 1, 0.030)
    assert len(said) == 1 and said[0][0] == "n1" and "3.0x the time its profile predicts" in said[0][1]
    assert slow.slowdown("n1") == 3.0
    for _ in range(WINDOW):
        now[0] += 1.0
        slow.observe("n1", LAYERS, 1, 0.010)
    assert len(said) == 2 and "back to its profile's speed" in said[1][1]


def test_a_short_burst_and_a_stage_without_profile_are_not_judged() -> None:
    slow, said, now = watch()
    for _ in range(WINDOW):  # within a second
        now[0] += 0.01
        slow.observe("n1", LAYERS, 1, 0.050)
        slow.observe("n2", LAYERS, 1, 0.050)
    assert said == [] and slow.slowdown("n2") == 0.0
