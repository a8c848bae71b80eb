"""coordinator/partition.py: proportional contiguous layer splits and explicit-range checks."""

from __future__ import annotations

import random

import pytest

from coordinator.partition import PartitionError, check_explicit_ranges, partition_layers
from protos.data_structures import LayerRange


def _pairs(ranges: list[LayerRange]) -> list[tuple[int, int]]:
    return [(r.start, r.end) for r in ranges]


def _assert_valid(ranges: list[LayerRange], num_layers: int, num_nodes: int) -> None:
    assert len(ranges) == num_nodes
    assert ranges[0].start == 0
    assert ranges[-1].end == num_layers
    for prev, cur in zip(ranges, ranges[1:], strict=False):
        assert cur.start == prev.end
    assert all(r.length >= 1 for r in ranges)
    assert sum(r.length for r in ranges) == num_layers


@pytest.mark.parametrize(
    ("num_layers", "capacities", "expected"),
    [
        (30, [1, 1, 1], [(0, 10), (10, 20), (20, 30)]),
        (30, [1.0], [(0, 30)]),
        (4, [1, 1, 1, 1], [(0, 1), (1, 2), (2, 3), (3, 4)]),
        (3, [5, 1, 1], [(0, 1), (1, 2), (2, 3)]),  # nodes == layers: one each whatever the capacity
        # spare 27 split 2:1:1 -> quotas 13.5, 6.75, 6.75 -> floors 13, 6, 6, two leftovers go to the
        # 0.75 remainders (nodes 1 and 2): counts 14, 8, 8
        (30, [2, 1, 1], [(0, 14), (14, 22), (22, 30)]),
        # 10 layers over 3 equal nodes: remainders tie, lower index wins -> 4, 3, 3
        (10, [1, 1, 1], [(0, 4), (4, 7), (7, 10)]),
        # 11 over 3 equal: two leftovers go to nodes 0 and 1
        (11, [1, 1, 1], [(0, 4), (4, 8), (8, 11)]),
        (5, [1, 1], [(0, 3), (3, 5)]),
    ],
)
def test_partition_table(num_layers: int, capacities: list[float], expected: list[tuple[int, int]]) -> None:
    ranges = partition_layers(num_layers, capacities)
    assert _pairs(ranges) == expected
    _assert_valid(ranges, num_layers, len(capacities))


@pytest.mark.parametrize(("num_layers", "num_nodes"), [(10, 3), (7, 4), (31, 5), (100, 7), (2, 2)])
def test_uneven_equal_capacity_sizes_differ_by_at_most_one(num_layers: int, num_nodes: int) -> None:
    ranges = partition_layers(num_layers, [1.0] * num_nodes)
    _assert_valid(ranges, num_layers, num_nodes)
    sizes = [r.length for r in ranges]
    assert max(sizes) - min(sizes) <= 1


def test_capacity_weights_give_first_node_about_half() -> None:
    ranges = partition_layers(30, [2, 1, 1])
    assert 14 <= ranges[0].length <= 16
    assert ranges[1].length == ranges[2].length


def test_tie_breaking_is_deterministic_and_prefers_lower_index() -> None:
    first = partition_layers(10, [1, 1, 1])
    for _ in range(5):
        assert partition_layers(10, [1, 1, 1]) == first
    sizes = [r.length for r in first]
    assert sizes == sorted(sizes, reverse=True)  # the extra layer goes to the earliest node


def test_returns_layer_range_objects() -> None:
    ranges = partition_layers(6, [1, 1])
    assert all(isinstance(r, LayerRange) for r in ranges)


def test_more_nodes_than_layers_names_both_numbers() -> None:
    with pytest.raises(PartitionError) as exc:
        partition_layers(3, [1, 1, 1, 1, 1])
    msg = str(exc.value)
    assert "5" in msg and "3" in msg


@pytest.mark.parametrize("capacities", [[1, 0, 1], [1, -1], [-2.0], [1, float("nan")], [float("inf"), 1]])
def test_non_positive_or_non_finite_capacity_raises(capacities: list[float]) -> None:
    with pytest.raises(PartitionError, match="capacit"):
        partition_layers(10, capacities)


def test_zero_nodes_and_zero_layers_raise() -> None:
    with pytest.raises(PartitionError):
        partition_layers(10, [])
    with pytest.raises(PartitionError):
        partition_layers(0, [1])


def test_partition_error_is_a_value_error() -> None:
    assert issubclass(PartitionError, ValueError)


def test_property_random_capacities() -> None:
    rng = random.Random(1234)
    for _ in range(500):
        num_layers = rng.randint(1, 120)
        num_nodes = rng.randint(1, min(num_layers, 12))
        capacities = [rng.uniform(0.01, 10.0) for _ in range(num_nodes)]
        ranges = partition_layers(num_layers, capacities)
        _assert_valid(ranges, num_layers, num_nodes)
        assert partition_layers(num_layers, capacities) == ranges  # deterministic


def test_property_proportionality() -> None:
    """Each node's share beyond its guaranteed layer is within one layer of its exact quota."""
    rng = random.Random(99)
    for _ in range(300):
        num_layers = rng.randint(1, 80)
        num_nodes = rng.randint(1, min(num_layers, 8))
        capacities = [rng.uniform(0.1, 5.0) for _ in range(num_nodes)]
        ranges = partition_layers(num_layers, capacities)
        spare = num_layers - num_nodes
        total = sum(capacities)
        for r, c in zip(ranges, capacities, strict=True):
            quota = spare * c / total
            assert abs((r.length - 1) - quota) < 1.0 + 1e-9


# ------------------------------------------------------------------ explicit ranges


def _ranges(*pairs: tuple[int, int]) -> list[LayerRange]:
    return [LayerRange(a, b) for a, b in pairs]


def test_explicit_ranges_ok() -> None:
    given = _ranges((0, 3), (3, 10), (10, 30))
    assert check_explicit_ranges(30, given) == given
    assert check_explicit_ranges(30, tuple(given)) == given  # any sequence; returns a list


@pytest.mark.parametrize(
    ("pairs", "fragment"),
    [
        (((0, 10), (11, 30)), "gaps and overlaps"),  # gap
        (((0, 10), (9, 30)), "gaps and overlaps"),  # overlap
        (((1, 10), (10, 30)), "start at layer 0"),
        (((0, 10), (10, 29)), "end at layer 30"),
        (((0, 10), (10, 31)), "end at layer 30"),
    ],
)
def test_explicit_ranges_rejected(pairs: tuple[tuple[int, int], ...], fragment: str) -> None:
    with pytest.raises(PartitionError, match=fragment):
        check_explicit_ranges(30, _ranges(*pairs))


def test_explicit_ranges_empty_rejected() -> None:
    with pytest.raises(PartitionError):
        check_explicit_ranges(30, [])


@pytest.mark.parametrize("head_cost,expected", [
    (0.0, [(0, 10), (10, 20), (20, 30)]),
    (8.0, [(0, 13), (13, 25), (25, 30)]),  # SmolLM2-135M: work 13 / 12 / 5 + 8
    (100.0, [(0, 15), (15, 29), (29, 30)]),  # a head heavier than every layer: the last node keeps one
])
def test_head_cost_moves_layers_off_the_last_stage(head_cost: float, expected: list[tuple[int, int]]) -> None:
    got = partition_layers(30, [1, 1, 1], head_cost)
    assert [(r.start, r.end) for r in got] == expected


def test_smollm2_head_cost_from_its_config() -> None:
    from coordinator.model_meta import head_cost

    cfg = {"model_type": "llama", "hidden_size": 576, "intermediate_size": 1536, "num_attention_heads": 9,
           "num_key_value_heads": 3, "vocab_size": 49152}
    assert head_cost(cfg) == pytest.approx(8.0, abs=0.01)
    assert head_cost({"model_type": "gpt2", "n_embd": 768, "vocab_size": 50257}) == pytest.approx(50257 / 9216)


def test_negative_head_cost_is_refused() -> None:
    with pytest.raises(PartitionError, match="head_cost"):
        partition_layers(4, [1, 1], -1.0)


@pytest.mark.parametrize("stage_hosts,depth", [
    ([("a", 16), ("b", 16), ("c", 16)], 3),  # three machines: one micro-batch per stage
    ([("a", 2), ("a", 2), ("a", 2)], 2),  # three nodes sharing two cores (make up here)
    ([("a", 1), ("a", 1), ("b", 8)], 2),  # two stages share one core, the third has its own machine
    ([("a", 64), ("a", 64)], 2),
])
def test_default_pipeline_depth(stage_hosts: list[tuple[str, int]], depth: int) -> None:
    from coordinator.cluster import default_depth

    assert default_depth(stage_hosts) == depth
