"""shard_node/cores.py: co-located nodes split the cores among those busy at the moment (a board per test)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from shard_node.cores import IDLE, SLOTS, STALE_S, CoreShare


@pytest.fixture(autouse=True)
def keep_torch_threads() -> Iterator[None]:
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_a_lone_busy_node_gets_every_core(tmp_path: Path) -> None:
    board = tmp_path / "board"
    a, b, c = (CoreShare(4, board) for _ in range(3))
    assert sorted({a.slot, b.slot, c.slot}) == [0, 1, 2]  # one slot each
    with a.running() as threads:
        assert threads == 4 and torch.get_num_threads() == 4
    with b.running() as threads:  # a is done: b is alone again
        assert threads == 4


def test_busy_nodes_split_the_cores(tmp_path: Path) -> None:
    board = tmp_path / "board"
    a, b, c = (CoreShare(4, board) for _ in range(3))
    with a.running():
        with b.running() as threads:
            assert threads == 2 and a.counts(time.monotonic()) == (2, 3)
            with c.running() as threads:
                assert threads == 1  # 4 // 3
    assert a.counts(time.monotonic()) == (1, 3)  # none busy: a node counts at least itself


def test_a_dead_nodes_slot_is_freed_and_its_stale_mark_ignored(tmp_path: Path) -> None:
    board = tmp_path / "board"
    a, b = CoreShare(2, board), CoreShare(2, board)
    a._mark(time.monotonic() - STALE_S - 1)  # died mid-batch long ago
    with b.running() as threads:
        assert threads == 2
    slot = a.slot
    a.close()  # the process's lock goes with it
    assert CoreShare(2, board).slot == slot


def test_fixed_threads_ignore_the_board(tmp_path: Path) -> None:
    share = CoreShare(8, tmp_path / "board", fixed_threads=3)
    assert share.slot == -1 and not (tmp_path / "board").exists()
    with share.running() as threads:
        assert threads == 3 and torch.get_num_threads() == 3
    assert "3 torch thread" in share.describe()


def test_without_a_board_a_node_counts_only_itself(tmp_path: Path) -> None:
    share = CoreShare(2, tmp_path / "missing-dir" / "board")
    assert share.slot == -1
    with share.running() as threads:
        assert threads == 2
    assert "no core board" in share.describe()


def test_a_full_board_leaves_a_node_on_its_own(tmp_path: Path) -> None:
    board = tmp_path / "board"
    held = [CoreShare(2, board) for _ in range(SLOTS)]
    extra = CoreShare(2, board)
    assert extra.slot == -1 and extra.counts(time.monotonic()) == (1, 1)
    for share in held:
        share.close()


def test_with_more_micro_batches_in_flight_the_cores_are_split_among_every_node(tmp_path: Path) -> None:
    board = tmp_path / "board"
    a, _, _ = (CoreShare(6, board) for _ in range(3))
    with a.running(in_flight=1) as threads:
        assert threads == 6  # a lone stream: the others wait for this stage
    with a.running(in_flight=2) as threads:
        assert threads == 2  # the others are about to work too
    with a.running(in_flight=0) as threads:
        assert threads == 2  # a coordinator that does not say: the safe split


def test_a_starting_node_frees_the_slots_of_nodes_that_died(tmp_path: Path) -> None:
    board = tmp_path / "board"
    dead = CoreShare(2, board)
    dead._write(5, IDLE)  # a slot whose process is gone: its mark stays, nobody holds its lock
    assert dead.counts(time.monotonic()) == (1, 2)
    CoreShare(2, board)
    assert dead.counts(time.monotonic()) == (1, 2)  # the newcomer, not the ghost: slot 5 was cleared
