"""shard_node/attention.py against attention computed one sequence at a time on contiguous caches (the layout
transformers uses): bit-identical per sequence (the CPU path) and wherever nothing is padded, within float
rounding where batched decode rows are (the CUDA path, run here on CPU)."""

from __future__ import annotations

import pytest
import torch

from shard_node.attention import causal_attention, paged_attention, plan_batch
from shard_node.kv_cache import PAD_SLOT, KVCache, SequenceCache

H, KV, HD = 9, 3, 16
LAYERS = 2


class Reference:
    """Each sequence's keys and values in its own contiguous [KV, positions, hd] tensors."""

    def __init__(self) -> None:
        self.k: dict[str, torch.Tensor] = {}
        self.v: dict[str, torch.Tensor] = {}

    def attend(self, seq: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, start: int) -> torch.Tensor:
        old_k = self.k.get(seq, torch.empty(KV, 0, HD))
        old_v = self.v.get(seq, torch.empty(KV, 0, HD))
        self.k[seq] = torch.cat([old_k[:, :start], k.transpose(0, 1)], dim=1)
        self.v[seq] = torch.cat([old_v[:, :start], v.transpose(0, 1)], dim=1)
        return causal_attention(q.transpose(0, 1), self.k[seq], self.v[seq], start)


def _pool() -> KVCache:
    """A pool whose unwritten slots hold NaN (torch.empty may): no output may read them."""
    pool = KVCache(LAYERS, KV, HD, capacity_tokens=4096, dtype=torch.float32, device=torch.device("cpu"))
    pool.k[:, PAD_SLOT + 1:] = float("nan")
    pool.v[:, PAD_SLOT + 1:] = float("nan")
    return pool


def _step(pool: KVCache, ref: Reference, entries: dict[str, SequenceCache], work: list[tuple[str, int]],
          layer: int = 0, batch_decode: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """One micro-batch: (seq, new tokens) in order; returns (paged output, reference output)."""
    n = sum(t for _, t in work)
    q, k, v = torch.randn(n, H, HD), torch.randn(n, KV, HD), torch.randn(n, KV, HD)
    for seq, _ in work:
        if seq not in entries:
            entries[seq] = pool.allocate(seq, 64, owner=1)
    batch_entries = [entries[s] for s, _ in work]
    starts = [e.length for e in batch_entries]
    batch = plan_batch(pool, batch_entries, starts, [t for _, t in work], batch_decode)
    got = paged_attention(q, k, v, batch, layer)
    expected, row = [], 0
    for (seq, t), start in zip(work, starts):
        expected.append(ref.attend(seq, q[row:row + t], k[row:row + t], v[row:row + t], start))
        row += t
    for (_, t), e in zip(work, batch_entries):
        e.length += t
    return got, torch.cat(expected)


@pytest.mark.parametrize("batch_decode", [False, True])
def test_one_sequence_is_bit_identical_through_prefill_and_decode(batch_decode: bool) -> None:
    torch.manual_seed(0)
    pool, ref, entries = _pool(), Reference(), {}
    got, want = _step(pool, ref, entries, [("a", 37)], batch_decode=batch_decode)  # prefill from position 0
    assert torch.equal(got, want)
    for _ in range(20):  # decode across block boundaries (16 positions a block)
        got, want = _step(pool, ref, entries, [("a", 1)], batch_decode=batch_decode)
        assert torch.equal(got, want)
    got, want = _step(pool, ref, entries, [("a", 5)], batch_decode=batch_decode)  # a chunk after cached positions
    assert torch.equal(got, want)


def test_batched_decode_rows_of_equal_length_need_no_mask_and_match_within_rounding() -> None:
    """Equal lengths: one unmasked call. Bit-identical to one call per sequence on some CPUs' SDPA kernels but not
    all (an AVX-512 AMD EPYC reduces the second row in another order: 4.5e-8 apart), so rounding is allowed."""
    torch.manual_seed(1)
    pool, ref, entries = _pool(), Reference(), {}
    _step(pool, ref, entries, [("a", 20)])
    _step(pool, ref, entries, [("b", 20)])
    batch = plan_batch(pool, [entries["a"], entries["b"]], [20, 20], [1, 1], batch_decode=True)
    assert batch.decode is not None and batch.decode.mask is None
    got, want = _step(pool, ref, entries, [("a", 1), ("b", 1)], batch_decode=True)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


MIXED = [("a", 1), ("d", 9), ("b", 1), ("c", 6), ("e", 1)]  # decode rows around a new and a continued chunk


def _three_prefilled() -> tuple[KVCache, Reference, dict[str, SequenceCache]]:
    """Sequences a, b, c prefilled with 3, 40 and 17 positions."""
    torch.manual_seed(2)
    pool, ref, entries = _pool(), Reference(), {}
    for seq, length in (("a", 3), ("b", 40), ("c", 17)):
        _step(pool, ref, entries, [(seq, length)])
    return pool, ref, entries


def test_per_sequence_rows_of_a_mixed_batch_are_bit_identical() -> None:
    pool, ref, entries = _three_prefilled()
    got, want = _step(pool, ref, entries, MIXED)
    assert torch.equal(got, want)


def test_batched_decode_rows_in_a_mixed_batch_match_per_sequence_attention() -> None:
    pool, ref, entries = _three_prefilled()
    for _ in range(3):  # decode rows of different lengths around two prefill chunks (one new, one continued)
        got, want = _step(pool, ref, entries, MIXED, batch_decode=True)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        for seq in ("d", "e"):
            entries.pop(seq), pool.release(seq), ref.k.pop(seq), ref.v.pop(seq)


def test_a_sequence_on_several_runs_gathers_its_keys() -> None:
    torch.manual_seed(3)
    pool = KVCache(LAYERS, KV, HD, capacity_tokens=68, dtype=torch.float32, device=torch.device("cpu"),
                   max_sequences=4)
    ref, entries = Reference(), {}
    for i in range(4):  # two blocks each
        entries[f"s{i}"] = pool.allocate(f"s{i}", 17, owner=1)
    for seq in ("s0", "s2"):
        pool.release(seq), entries.pop(seq)
    entries["late"] = pool.allocate("late", 34, owner=1)
    assert entries["late"].first_slot is None
    _step(pool, ref, entries, [("late", 30)])
    for _ in range(3):  # positions 30..32 cross into its third, separate block
        got, want = _step(pool, ref, entries, [("late", 1)])
        assert torch.equal(got, want)


@pytest.mark.parametrize("layer", [0, 1])
def test_new_keys_land_in_their_slots_of_their_layer(layer: int) -> None:
    pool, ref, entries = _pool(), Reference(), {}
    _step(pool, ref, entries, [("a", 18)], layer)
    slots = pool.slots(entries["a"], 0, 18)
    assert torch.equal(pool.k[layer, slots], ref.k["a"].transpose(0, 1))
    assert torch.equal(pool.v[layer, slots], ref.v["a"].transpose(0, 1))
