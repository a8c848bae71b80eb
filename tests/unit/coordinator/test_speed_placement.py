"""Speed-aware placement from node profiles (pure): predictions of a plan, the split that minimises the predicted
time per token under memory, slow nodes left out with the reason, and explicit bounds respected."""

from __future__ import annotations

import pytest

from coordinator.speed_model import STAGE_OVERHEAD_S, TOKEN_OVERHEAD_S, Links, NodeSpeed, Stage, predict
from coordinator.speed_placement import NoPlan, plan_by_speed
from protos.data_structures import LayerRange

MS = 1e-3


def node(node_id: str, per_layer_ms: float, head_ms: float = 8.0, rtt_ms: float = 0.0) -> NodeSpeed:
    """A node whose time per layer grows with the rows (half the one-row time per extra 8 rows) and whose head costs
    ``head_ms`` at one row."""
    one = per_layer_ms * MS
    return NodeSpeed(node_id, {1: one, 8: one * 1.5, 32: one * 3}, {1: head_ms * MS, 8: head_ms * MS * 2,
                                                                    32: head_ms * MS * 6}, rtt_s=rtt_ms * MS)


def unlimited(node_id: str, first: bool, last: bool) -> int:
    return 1000


def test_one_stream_is_predicted_as_the_sum_of_the_stages_and_the_ring() -> None:
    a, b = node("a", 1.0, rtt_ms=2.0), node("b", 2.0, rtt_ms=4.0)
    p = predict([Stage(a, LayerRange(0, 10)), Stage(b, LayerRange(10, 30))], 30)
    compute = 10 * 1e-3 + 20 * 2e-3 + 8e-3 + 2 * STAGE_OVERHEAD_S + TOKEN_OVERHEAD_S
    # one stream with ring decode: a -> b, b -> a (not measured: the mean of their round trips to the coordinator)
    assert p.single_tps == pytest.approx(1 / (compute + (3e-3 + 3e-3) / 2))
    measured = Links({("a", "b"): 10e-3, ("b", "a"): 6e-3})
    stages = [Stage(a, LayerRange(0, 10)), Stage(b, LayerRange(10, 30))]
    assert predict(stages, 30, links=measured).single_tps == pytest.approx(1 / (compute + (10e-3 + 6e-3) / 2))
    # without ring decode: coordinator -> a, a -> b, b -> coordinator
    no_ring = Links(measured.between, ring_decode=False)
    assert predict(stages, 30, links=no_ring).single_tps == pytest.approx(1 / (compute + (2e-3 + 10e-3 + 4e-3) / 2))
    assert predict(stages, 30, links=Links(star=True)).single_tps == pytest.approx(1 / (compute + 2e-3 + 4e-3))
    assert p.step_seconds == pytest.approx([10e-3 + STAGE_OVERHEAD_S, 40e-3 + 8e-3 + STAGE_OVERHEAD_S])
    lanes_of_4 = [Stage(a, LayerRange(0, 15)), Stage(b, LayerRange(15, 30))]
    assert p.aggregate_tps[8] > p.single_tps and predict(lanes_of_4, 30).aggregate_tps[8] > 0


def test_a_node_four_times_slower_is_left_out_of_one_stream_with_the_reason() -> None:
    fast1, slow, fast2 = node("n1", 1.0), node("n2", 4.0), node("n3", 1.0)
    plan = plan_by_speed(30, [fast1, slow, fast2], unlimited)
    assert "n2" not in plan.node_ids and plan.ranges[-1].end == 30
    assert "ms per token" in plan.left_out["n2"]
    capacity_weighted = [Stage(fast1, LayerRange(0, 12)), Stage(slow, LayerRange(12, 24)),
                         Stage(fast2, LayerRange(24, 30))]
    assert plan.prediction.single_tps > 1.3 * predict(capacity_weighted, 30).single_tps


def test_memory_bounds_each_node_and_the_slow_one_gets_only_what_is_left() -> None:
    caps = {"n1": 12, "n2": 30, "n3": 12}
    plan = plan_by_speed(30, [node("n1", 1.0), node("n2", 4.0), node("n3", 1.0)],
                         lambda n, first, last: caps[n])
    counts = {s.node.node_id: s.layers.length for s in plan.stages}
    assert counts["n2"] == 6 and counts["n1"] == counts["n3"] == 12
    with pytest.raises(NoPlan, match="memory"):
        plan_by_speed(30, [node("n1", 1.0)], lambda n, first, last: 10)


def test_many_streams_balance_the_stages_by_their_speed() -> None:
    def compute_bound(node_id: str, per_row_ms: float) -> NodeSpeed:  # no batching gain: rows cost in proportion
        return NodeSpeed(node_id, {r: r * per_row_ms * MS for r in (1, 8, 32)}, {1: 0.0})

    a, b = compute_bound("a", 1.0), compute_bound("b", 3.0)
    plan = plan_by_speed(32, [a, b], unlimited, concurrency=32)
    counts = {s.node.node_id: s.layers.length for s in plan.stages}
    assert len(plan.stages) == 2 and counts["a"] == 24 and counts["b"] == 8  # equal steps: 24 x 1 = 8 x 3
    alone = plan_by_speed(32, [a], unlimited, concurrency=32)
    assert plan.seconds_per_token < alone.seconds_per_token  # two stages pipeline where one cannot


def test_a_slow_link_between_two_nodes_keeps_them_apart() -> None:
    """Two equally fast nodes pipeline 16 streams, but not over a 200 ms link: the plan takes the fast link."""
    a, b, c = node("a", 1.0), node("b", 1.0), node("c", 1.0)
    slow_link = Links({("a", "b"): 0.2, ("b", "a"): 0.2, ("a", "c"): 0.2, ("c", "a"): 0.2,
                       ("b", "c"): 1e-4, ("c", "b"): 1e-4})
    plan = plan_by_speed(30, [a, b, c], unlimited, concurrency=16, links=slow_link)
    assert "a" not in plan.node_ids and sorted(plan.node_ids) == ["b", "c"], plan
    assert "with it the best plan predicts" in plan.left_out["a"]
    fast_links = plan_by_speed(30, [a, b, c], unlimited, concurrency=16)
    assert len(fast_links.node_ids) == 3  # without the slow link all three pipeline


def test_a_stage_more_must_win_by_the_margin() -> None:
    """b is faster per layer, a has the cheaper head: 29 layers on b and the last on a are predicted about 2 % faster
    than all on b, but not by STAGE_MARGIN: one stage, on b."""
    a, b = node("a", 1.0, head_ms=0.2, rtt_ms=0.1), node("b", 0.9, head_ms=1.5, rtt_ms=0.1)
    assert plan_by_speed(30, [a, b], unlimited).node_ids == ["b"]
    with_a_cheaper_head = plan_by_speed(30, [node("a", 1.0, head_ms=0.2, rtt_ms=0.1), node("b", 0.9, head_ms=4.0,
                                                                                           rtt_ms=0.1)], unlimited)
    assert with_a_cheaper_head.node_ids == ["b", "a"]  # 10 % faster: worth the stage
    much_faster = plan_by_speed(30, [a, node("c", 0.5, head_ms=1.0, rtt_ms=0.1)], unlimited, concurrency=16)
    assert len(much_faster.node_ids) == 2  # a real gain still pipelines
