"""shard_node/kv_cache.py: the paged KV pool, its block tables and reference counts, under a token budget."""

from __future__ import annotations

import time

import pytest
import torch

from shard_node.kv_cache import CacheFull, KVCache, UnknownSequence


@pytest.fixture
def kv() -> KVCache:
    return KVCache(num_layers=2, num_kv_heads=3, head_dim=4, capacity_tokens=100, dtype=torch.float32,
                   device=torch.device("cpu"))


def test_allocate_get_release(kv: KVCache) -> None:
    entry = kv.allocate("s1", 10, owner=1)
    assert entry.seq_id == "s1" and entry.owner == 1 and entry.capacity == 10 and entry.length == 0
    assert entry.blocks == [1] and entry.first_slot == 16  # what it reserved, one run (block 0 pads)
    assert kv.k.shape == kv.v.shape == (2, (kv.num_blocks + 1) * kv.block_size, 3, 4)  # + the pad block
    assert kv.k.dtype == torch.float32
    assert "s1" in kv and kv.num_sequences == 1
    assert kv.get("s1") is entry
    assert kv.release("s1") is True
    assert "s1" not in kv and kv.num_sequences == 0
    assert kv.release("s1") is False


def test_used_tokens_accounting(kv: KVCache) -> None:
    assert kv.used_tokens == 0
    kv.allocate("a", 30, owner=1)
    kv.allocate("b", 25, owner=1)
    assert kv.used_tokens == 55
    kv.release("a")
    assert kv.used_tokens == 25
    kv.allocate("c", 75, owner=2)  # exactly fills the budget
    assert kv.used_tokens == 100


def test_bytes_per_token() -> None:
    kv16 = KVCache(3, 2, 8, 10, torch.float16, torch.device("cpu"))
    assert kv16.bytes_per_token == 2 * 3 * 2 * 8 * 2


def test_cache_full_message_has_numbers(kv: KVCache) -> None:
    kv.allocate("a", 60, owner=1)
    with pytest.raises(CacheFull) as exc:
        kv.allocate("b", 50, owner=1)
    msg = str(exc.value)
    assert "50" in msg and "40" in msg and "100" in msg and "60" in msg
    assert "b" not in kv and kv.used_tokens == 60  # a refused allocation changes nothing


def test_check_fits_counts_all_requests(kv: KVCache) -> None:
    kv.check_fits({"x": 50, "y": 50})
    with pytest.raises(CacheFull, match="2 new sequence"):
        kv.check_fits({"x": 50, "y": 51})


def test_release_owner_frees_only_that_owner(kv: KVCache) -> None:
    kv.allocate("a1", 10, owner=1)
    kv.allocate("a2", 10, owner=1)
    kv.allocate("b1", 10, owner=2)
    assert kv.release_owner(1) == 2
    assert "a1" not in kv and "a2" not in kv and "b1" in kv
    assert kv.used_tokens == 10
    assert kv.release_owner(1) == 0
    assert kv.release_owner(3) == 0


def test_release_idle(kv: KVCache) -> None:
    kv.allocate("old", 10, owner=1)
    kv.allocate("fresh", 10, owner=1)
    kv.get("old").last_used = time.monotonic() - 100
    assert kv.release_idle(50) == ["old"]
    assert "old" not in kv and "fresh" in kv
    assert kv.release_idle(50) == []


def test_get_refreshes_last_used(kv: KVCache) -> None:
    entry = kv.allocate("s", 10, owner=1)
    entry.last_used = time.monotonic() - 100
    kv.get("s")
    assert kv.release_idle(50) == []


def test_unknown_sequence(kv: KVCache) -> None:
    with pytest.raises(UnknownSequence):
        kv.get("nope")
    assert issubclass(UnknownSequence, KeyError)


def test_allocate_same_id_twice(kv: KVCache) -> None:
    kv.allocate("s", 10, owner=1)
    with pytest.raises(ValueError, match="already has a KV cache"):
        kv.allocate("s", 10, owner=2)
    assert kv.get("s").owner == 1 and kv.used_tokens == 10


def test_max_sequences_bounds_the_shard() -> None:
    kv = KVCache(num_layers=1, num_kv_heads=1, head_dim=2, capacity_tokens=1000, dtype=torch.float32,
                 device=torch.device("cpu"), max_sequences=2)
    kv.allocate("a", 1, owner=1)
    kv.allocate("b", 1, owner=1)
    with pytest.raises(CacheFull, match="at most 2 at once"):
        kv.allocate("c", 1, owner=1)
    kv.check_fits({"c": 1}, releasing=("a",))  # room once "a" is released in the same batch


def test_pool_holds_the_budget_plus_a_partial_block_per_sequence() -> None:
    kv = KVCache(num_layers=1, num_kv_heads=1, head_dim=2, capacity_tokens=100, dtype=torch.float32,
                 device=torch.device("cpu"), max_sequences=8, block_size=16)
    assert kv.num_blocks == 7 + 8  # ceil(100 / 16) + one per sequence it may hold
    entries = [kv.allocate(f"s{i}", 12, owner=1) for i in range(8)]  # 96 tokens, 8 partial blocks
    assert kv.used_blocks == 8 and all(len(e.blocks) == 1 for e in entries)


def test_a_sequence_gets_one_run_of_blocks_and_release_merges_them_back(kv: KVCache) -> None:
    a, b = kv.allocate("a", 40, owner=1), kv.allocate("b", 20, owner=1)
    assert a.blocks == [1, 2, 3] and b.blocks == [4, 5]  # block 0 is the pad block, never given out
    assert kv.slots(a, 15, 18) == [31, 32, 33] and a.first_slot == 16
    kv.release("a")
    assert kv.used_blocks == 2
    c = kv.allocate("c", 20, owner=1)
    assert c.blocks == [1, 2]  # the smallest free run that holds it (3 blocks freed by a, before the big tail)
    kv.release("b")
    kv.release("c")
    assert kv.used_blocks == 0 and kv._pool.runs == [(1, kv.num_blocks)]  # every free block merged into one run


def test_a_fragmented_pool_gives_several_runs() -> None:
    kv = KVCache(num_layers=1, num_kv_heads=1, head_dim=2, capacity_tokens=68, dtype=torch.float32,
                 device=torch.device("cpu"), max_sequences=4, block_size=16)
    assert kv.num_blocks == 5 + 4
    held = [kv.allocate(f"s{i}", 17, owner=1) for i in range(4)]  # two blocks each: 1-2, 3-4, 5-6, 7-8
    assert [e.blocks for e in held] == [[1, 2], [3, 4], [5, 6], [7, 8]]
    kv.release("s0")
    kv.release("s2")  # free runs: 1-2, 5-6, 9
    late = kv.allocate("late", 34, owner=1)  # three blocks, no run holds them
    assert late.blocks == [1, 2, 9] and late.first_slot is None  # the largest run, then the best fit
    assert kv.slots(late, 31, 33) == [47, 144]  # position 32 starts its third block (9)


def test_fork_shares_full_blocks_until_both_are_released(kv: KVCache) -> None:
    src = kv.allocate("src", 40, owner=1)
    src.length = 35
    child = kv.fork(src, "child", owner=1, max_tokens=40)
    assert child.blocks[:2] == src.blocks[:2] and child.length == 32  # the two full blocks, not the partial one
    assert len(child.blocks) == 3 and child.blocks[2] not in src.blocks and child.first_slot is None
    kv.release("src")
    assert kv.used_blocks == 3  # the shared blocks stay while the child holds them
    kv.release("child")
    assert kv.used_blocks == 0


def test_release_owner_and_idle_free_blocks(kv: KVCache) -> None:
    kv.allocate("a", 30, owner=7)
    assert kv.release_owner(7) == 1 and kv.used_blocks == 0
    e = kv.allocate("b", 30, owner=7)
    e.last_used = time.monotonic() - 100
    assert kv.release_idle(50) == ["b"] and kv.used_blocks == 0
