"""coordinator/placement.py: contiguous layer ranges over nodes with free memory, replicas, not fitting."""

from __future__ import annotations

import pytest

from coordinator.placement import DoesNotFit, ModelSizes, NodeRoom, place
from protos.data_structures import LayerRange

MiB = 2**20
# SmolLM2-like: 30 layers of 6.8 MiB weights + 0.1 MiB KV, 108 MiB embedding, 108 MiB tied head
SIZES = ModelSizes(layer_bytes=int(6.8 * MiB), kv_bytes_per_layer=int(0.1 * MiB), first_extra_bytes=108 * MiB,
                   last_extra_bytes=108 * MiB)


def test_unlimited_nodes_split_by_compute() -> None:
    p = place(30, SIZES, [NodeRoom("a", None), NodeRoom("b", None), NodeRoom("c", None)], head_cost=8)
    assert p.stages == (("a",), ("b",), ("c",))
    assert p.ranges == (LayerRange(0, 13), LayerRange(13, 25), LayerRange(25, 30))  # as the configured split


def test_budgets_bound_each_stage_and_the_ranges_cover_every_layer() -> None:
    rooms = [NodeRoom("a", 200 * MiB), NodeRoom("b", 300 * MiB), NodeRoom("c", 250 * MiB)]
    p = place(30, SIZES, rooms)
    assert p.ranges[0].start == 0 and p.ranges[-1].end == 30
    assert all(x.end == y.start for x, y in zip(p.ranges, p.ranges[1:]))
    for room, rng in zip(rooms, p.ranges):
        assert SIZES.stage_bytes(rng, 30) <= room.free_bytes


def test_replicas_take_nodes_in_groups() -> None:
    rooms = [NodeRoom(n, None) for n in "abcdef"]
    p = place(30, SIZES, rooms, replicas=2)
    assert p.stages == (("a", "b"), ("c", "d"), ("e", "f"))


def test_too_little_memory_says_how_much_is_missing() -> None:
    with pytest.raises(DoesNotFit, match="MiB"):
        place(30, SIZES, [NodeRoom("a", 130 * MiB), NodeRoom("b", 130 * MiB), NodeRoom("c", 130 * MiB)])


def test_nodes_without_room_for_a_layer_are_left_out() -> None:
    p = place(30, SIZES, [NodeRoom("a", 400 * MiB), NodeRoom("full", 1 * MiB), NodeRoom("b", 400 * MiB)])
    assert p.stages == (("a",), ("b",))


def test_not_enough_nodes_for_the_replicas() -> None:
    with pytest.raises(DoesNotFit, match="2 node"):
        place(30, SIZES, [NodeRoom("a", None)], replicas=2)


def test_configured_split_keeps_compute_balance_when_it_fits_and_obeys_budgets_when_not() -> None:
    from coordinator.partition import partition_layers
    from coordinator.placement import fit_ranges

    mib = 2**20
    # SmolLM2-like: 30 layers of 13.5 MiB + 3 MiB KV, a 108 MiB embedding first and a tied LM head last
    sizes = ModelSizes(int(13.5 * mib), 3 * mib, 108 * mib, 108 * mib)
    balanced = partition_layers(30, [1.0, 1.0, 1.0], 8.0)
    assert fit_ranges(30, sizes, [None, None, None], [1.0] * 3, 8.0) == balanced
    assert fit_ranges(30, sizes, [1024 * mib] * 3, [1.0] * 3, 8.0) == balanced
    budget = 307 * mib  # 60 % of the weights: the balanced split's first stage would not fit
    assert any(sizes.stage_bytes(r, 30) > budget for r in balanced)
    ranges = fit_ranges(30, sizes, [budget] * 3, [1.0] * 3, 8.0)
    assert ranges[0].start == 0 and ranges[-1].end == 30
    assert all(sizes.stage_bytes(r, 30) <= budget for r in ranges)
    # the first stage holds what its budget allows (12 layers), and the busiest stage does 13 layers' work
    assert ranges == [LayerRange(0, 12), LayerRange(12, 25), LayerRange(25, 30)]
    with pytest.raises(DoesNotFit):
        fit_ranges(30, sizes, [150 * mib] * 3, [1.0] * 3, 8.0)
