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
