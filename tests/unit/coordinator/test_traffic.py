"""TrafficHistory with a fake clock: busy shares, bytes per second and mean round trips per interval, the fixed
window, padding of late series, forgetting models and nodes, its wire form, and the sampler loop."""

from __future__ import annotations

import asyncio

import pytest

from coordinator.traffic import NOT_MEASURED_MS, TrafficHistory, history_to_proto, run_sampler


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _history(points: int = 150) -> tuple[TrafficHistory, FakeClock]:
    clock = FakeClock()
    return TrafficHistory(interval_s=2.0, points=points, clock=clock), clock


def _tick(history: TrafficHistory, clock: FakeClock, seconds: float = 2.0) -> None:
    clock.now += seconds
    history.sample()


def test_a_model_without_reports_has_no_history() -> None:
    history, clock = _history()
    _tick(history, clock)
    assert history.history("m") is None


def test_busy_share_is_compute_seconds_over_the_interval_and_at_most_one() -> None:
    history, clock = _history()
    history.add_stage("m", "n1", 0.5)
    history.add_stage("m", "n1", 0.5)
    history.add_stage("m", "n2", 0.25)
    _tick(history, clock)
    history.add_stage("m", "n1", 3.0)  # a long micro-batch reported in one interval: clamped
    _tick(history, clock)
    _tick(history, clock)  # idle
    h = history.history("m")
    assert h is not None and h.interval_s == 2.0
    shares = {s.node: s.busy_share for s in h.stages}
    assert shares == {"n1": (0.5, 1.0, 0.0), "n2": (0.125, 0.0, 0.0)}


def test_links_give_bytes_per_second_and_the_mean_round_trip_or_none() -> None:
    history, clock = _history()
    history.add_link("m", "coordinator", "n1", 1000, 0.002)
    history.add_link("m", "coordinator", "n1", 3000, 0.004)
    history.add_link("m", "n1", "n2", 500, None)  # round trip not measured
    _tick(history, clock)
    h = history.history("m")
    assert h is not None
    links = {(k.src, k.dst): (k.bytes_per_s, k.rtt_ms) for k in h.links}
    assert links[("coordinator", "n1")] == ((2000.0,), (pytest.approx(3.0),))
    assert links[("n1", "n2")] == ((250.0,), (None,))


def test_the_interval_is_the_time_since_the_previous_sample() -> None:
    history, clock = _history()
    history.restart_interval()
    history.add_link("m", "a", "b", 400, None)
    _tick(history, clock, seconds=4.0)  # a late sample divides by the time that really passed
    h = history.history("m")
    assert h is not None and h.links[0].bytes_per_s == (100.0,)
    history.sample()  # no time passed: no point
    h = history.history("m")
    assert h is not None and len(h.links[0].bytes_per_s) == 1


def test_the_window_keeps_the_last_points_only() -> None:
    history, clock = _history(points=3)
    for busy in (0.2, 0.4, 0.6, 0.8, 1.0):
        history.add_stage("m", "n1", busy)
        _tick(history, clock)
    h = history.history("m")
    assert h is not None and h.stages[0].busy_share == (0.3, 0.4, 0.5)


def test_a_series_that_appears_later_is_padded_so_all_end_at_the_newest_point() -> None:
    history, clock = _history()
    history.add_stage("m", "n1", 1.0)
    _tick(history, clock)
    _tick(history, clock)
    history.add_stage("m", "n2", 2.0)
    history.add_link("m", "n1", "n2", 10, 0.001)
    _tick(history, clock)
    h = history.history("m")
    assert h is not None
    assert {s.node: s.busy_share for s in h.stages} == {"n1": (0.5, 0.0, 0.0), "n2": (0.0, 0.0, 1.0)}
    assert h.links[0].bytes_per_s == (0.0, 0.0, 5.0) and h.links[0].rtt_ms == (None, None, 1.0)


def test_a_series_idle_for_a_whole_window_leaves_the_history() -> None:
    history, clock = _history(points=2)
    history.add_stage("m", "old", 1.0)
    history.add_link("m", "old", "coordinator", 10, None)
    _tick(history, clock)
    history.add_stage("m", "new", 1.0)
    _tick(history, clock)
    h = history.history("m")
    assert h is not None and {s.node for s in h.stages} == {"old", "new"}
    history.add_stage("m", "new", 1.0)
    _tick(history, clock)
    h = history.history("m")
    assert h is not None and [s.node for s in h.stages] == ["new"] and h.links == ()


def test_forget_model_and_node() -> None:
    history, clock = _history()
    history.add_stage("m", "n1", 1.0)
    history.add_stage("m", "n2", 1.0)
    history.add_link("m", "coordinator", "n1", 1, None)
    history.add_link("m", "n1", "n2", 1, None)
    history.add_link("m", "n2", "coordinator", 1, None)
    history.add_stage("other", "n1", 1.0)
    _tick(history, clock)
    history.forget_node("n1")
    h = history.history("m")
    assert h is not None
    assert [s.node for s in h.stages] == ["n2"] and [(k.src, k.dst) for k in h.links] == [("n2", "coordinator")]
    history.forget_model("m")
    assert history.history("m") is None and history.history("other") is not None


def test_wire_form_marks_unmeasured_round_trips() -> None:
    history, clock = _history()
    history.add_stage("m", "n1", 1.0)
    history.add_link("m", "n1", "n2", 20, None)
    _tick(history, clock)
    history.add_link("m", "n1", "n2", 20, 0.003)
    _tick(history, clock)
    h = history.history("m")
    assert h is not None
    wire = history_to_proto("m", h)
    assert wire.model == "m" and wire.interval_s == 2.0
    assert wire.stages[0].node_id == "n1" and list(wire.stages[0].busy_share) == [0.5, 0.0]
    link = wire.links[0]
    assert (link.src, link.dst, list(link.bytes_per_s)) == ("n1", "n2", [10.0, 10.0])
    assert list(link.rtt_ms) == [NOT_MEASURED_MS, pytest.approx(3.0)]


def test_the_sampler_samples_once_per_interval_until_cancelled() -> None:
    history, clock = _history()
    slept: list[float] = []

    async def fake_sleep(seconds: float) -> None:  # the clock moves as a real sleep would; the 4th is cancelled
        if len(slept) == 3:
            raise asyncio.CancelledError
        slept.append(seconds)
        history.add_stage("m", "n1", 1.0)
        clock.now += seconds

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(run_sampler(history, sleep=fake_sleep))
    h = history.history("m")
    assert slept == [2.0, 2.0, 2.0]
    assert h is not None and h.stages[0].busy_share == (0.5, 0.5, 0.5)
