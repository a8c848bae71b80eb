"""The series of where the time goes: per-stage busy seconds, per-link bytes and round trips, as /metrics shows
them, and the same reports reaching the coordinator's traffic history."""

from __future__ import annotations

from prometheus_client import REGISTRY

from coordinator import metrics


def _sample(name: str, labels: dict[str, str]) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def test_observe_stage_counts_busy_seconds_per_model_and_node() -> None:
    metrics.observe_stage("busy-model", "bn1", 0.25)
    metrics.observe_stage("busy-model", "bn1", 0.5)
    metrics.observe_stage("busy-model", "bn2", -1.0)  # a clock step back is no negative work
    assert _sample("shardline_stage_busy_seconds_total", {"model_name": "busy-model", "node": "bn1"}) == 0.75
    assert _sample("shardline_stage_busy_seconds_total", {"model_name": "busy-model", "node": "bn2"}) == 0.0
    history = metrics.TRAFFIC.history("busy-model")
    assert history is not None and {s.node for s in history.stages} == {"bn1", "bn2"}
    metrics.forget_model("busy-model")


def test_a_new_model_has_its_stages_busy_series_at_zero() -> None:
    metrics.init_model("zero-model", ["zn1"])
    assert _sample("shardline_stage_busy_seconds_total", {"model_name": "zero-model", "node": "zn1"}) == 0.0
    metrics.forget_model("zero-model")


def test_observe_link_counts_bytes_and_round_trips_in_small_buckets() -> None:
    link = {"model_name": "link-m", "src": "coordinator", "dst": "ln1"}
    metrics.observe_link("link-m", "coordinator", "ln1", 4096, 0.0003)
    metrics.observe_link("link-m", "coordinator", "ln1", 1024)  # round trip not measured this time
    assert _sample("shardline_link_bytes_total", link) == 5120
    assert _sample("shardline_link_round_trip_seconds_count", link) == 1
    assert _sample("shardline_link_round_trip_seconds_bucket", {**link, "le": "0.0001"}) == 0
    assert _sample("shardline_link_round_trip_seconds_bucket", {**link, "le": "0.0005"}) == 1
    assert metrics.RTT_BUCKETS[0] == 0.0001 and metrics.RTT_BUCKETS[-1] == 1.0
    history = metrics.TRAFFIC.history("link-m")
    assert history is not None and [(k.src, k.dst) for k in history.links] == [("coordinator", "ln1")]
    metrics.forget_model("link-m")
    assert _sample("shardline_link_bytes_total", link) is None
