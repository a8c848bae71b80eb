"""Attention of a ragged micro-batch against the shard's paged KV pool.

A micro-batch stacks the rows of several sequences in one [N, D] tensor: decode rows (one new token of a
sequence) and prefill chunks (several consecutive tokens of one sequence). The projections ran once on all rows;
here, for each layer:
- every row's new key and value go into the pool at their slots (one index_copy_ for the whole batch);
- on CPU each sequence attends over its own keys: a plain view of the pool when its blocks are one run (the
  usual case; kv_cache.py allocates runs), else its slots gathered; a chunk from position 0 over its fresh keys,
  exactly as transformers' prefill does;
- on CUDA every decode row attends in one call: keys gathered through the block tables into a [B, KV, T, hd]
  batch, shorter sequences masked (no mask when every sequence has T keys); prefill chunks as on CPU.
Why not one call on CPU too: measured (one thread, 10 SmolLM2 layers, 32 decode rows), the gather copies every
key once more, and a padded batch copies the padding: at 40 positions it was no faster than one call per sequence
(49.6 against 49.0 ms a step), at 500 positions twice as slow (174 against 83 ms). On CUDA a call per sequence
costs a kernel launch each, and the gather is cheap.
What depends on the batch only (slots, gather indices, the mask) is computed once per micro-batch in
``plan_batch`` and reused by every layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from shard_node.kv_cache import PAD_SLOT, KVCache, SequenceCache


@dataclass(frozen=True)
class SequenceRows:
    """One sequence's rows that attend on their own (a prefill chunk, or a decode row on CPU)."""

    rows: slice  # its rows in the batch
    start_pos: int  # position of its first row
    keys: slice | torch.Tensor | None  # pool slots of positions [0, start_pos + rows): a slice when they are
    # consecutive, else a tensor of slots; None for a chunk from position 0 (its fresh keys)


@dataclass(frozen=True)
class DecodeRows:
    rows: torch.Tensor | None  # [B] their rows in the batch; None when they are every row, in order
    gather: torch.Tensor  # [B, T] pool slots of each sequence's positions (PAD_SLOT past its length)
    mask: torch.Tensor | None  # [B, 1, 1, T] True where a key exists; None when every sequence has T keys


@dataclass(frozen=True)
class PagedBatch:
    """What every layer of one micro-batch needs to write and read the pool."""

    k_pool: torch.Tensor  # [L_local, slots, KV, hd]
    v_pool: torch.Tensor
    write_slots: torch.Tensor  # [N] the slot of each row's position
    decode: DecodeRows | None  # decode rows batched in one call (CUDA)
    sequences: tuple[SequenceRows, ...]  # the rows that attend per sequence
    num_rows: int


def plan_batch(kv: KVCache, entries: list[SequenceCache], starts: list[int], lengths: list[int],
               batch_decode: bool | None = None) -> PagedBatch:
    """Lays out the batch's slots. Sequence i has rows [sum(lengths[:i]), ... + lengths[i]) at positions
    [starts[i], starts[i] + lengths[i]). batch_decode: decode rows in one call (default: on CUDA only)."""
    device = kv.k.device
    batched = device.type == "cuda" if batch_decode is None else batch_decode
    write: list[int] = []
    decoding: list[tuple[int, SequenceCache, int]] = []  # (row, cache, keys it attends to)
    sequences: list[SequenceRows] = []
    row = 0
    for entry, start, n in zip(entries, starts, lengths):
        end = start + n  # within what it reserved: ShardRunner.validate checked it
        write.extend(kv.slots(entry, start, end))
        if n == 1 and batched:
            decoding.append((row, entry, end))
        elif start == 0 and n > 1:
            sequences.append(SequenceRows(slice(row, row + n), 0, None))
        elif entry.first_slot is not None:
            sequences.append(SequenceRows(slice(row, row + n), start, slice(entry.first_slot, entry.first_slot + end)))
        else:
            sequences.append(SequenceRows(slice(row, row + n), start, torch.tensor(kv.slots(entry, 0, end),
                                                                                   device=device)))
        row += n
    return PagedBatch(kv.k, kv.v, torch.tensor(write, device=device), _decode_rows(kv, decoding, row),
                      tuple(sequences), row)


def _decode_rows(kv: KVCache, decoding: list[tuple[int, SequenceCache, int]], num_rows: int) -> DecodeRows | None:
    if not decoding:
        return None
    device, bs = kv.k.device, kv.block_size
    lengths = [keys for _, _, keys in decoding]
    longest = max(lengths)
    width = -(-longest // bs)
    tables = [entry.blocks[:width] for _, entry, _ in decoding]
    table = torch.tensor([t + [PAD_SLOT] * (width - len(t)) for t in tables], device=device)  # [B, width] blocks
    gather = (table[:, :, None] * bs + torch.arange(bs, device=device)).view(len(tables), -1)[:, :longest]
    mask = None
    if min(lengths) != longest:  # a shorter sequence's missing keys read the zeroed pad slot, masked out
        present = torch.arange(longest, device=device)[None, :] < torch.tensor(lengths, device=device)[:, None]
        gather = gather.masked_fill(~present, PAD_SLOT)
        mask = present[:, None, None, :]
    every_row = len(decoding) == num_rows  # rows are in increasing order, so then they are 0..N-1
    rows = None if every_row else torch.tensor([r for r, _, _ in decoding], device=device)
    return DecodeRows(rows, gather.contiguous(), mask)


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, start_pos: int, scale: float | None = None
                     ) -> torch.Tensor:
    """q: [H, T, hd]; k, v: [KV, start_pos + T, hd] -> [T, H * hd], causal within the sequence."""
    num_q = q.shape[1]
    mask = None
    is_causal = False
    if num_q > 1:
        if start_pos == 0:
            is_causal = True
        else:  # a chunk after cached tokens: query i sees keys [0, start_pos + i]
            key_pos = torch.arange(k.shape[1], device=q.device)
            query_pos = torch.arange(start_pos, start_pos + num_q, device=q.device)
            mask = key_pos[None, :] <= query_pos[:, None]
    out = F.scaled_dot_product_attention(q.unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0), attn_mask=mask,
                                         is_causal=is_causal, scale=scale, enable_gqa=q.shape[0] != k.shape[0])
    return out.squeeze(0).transpose(0, 1).reshape(num_q, -1)


def paged_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, batch: PagedBatch, layer: int,
                    scale: float | None = None) -> torch.Tensor:
    """q: [N, H, hd]; k, v: [N, KV, hd] (this layer's new rows) -> [N, H * hd]."""
    k_pool, v_pool = batch.k_pool[layer], batch.v_pool[layer]
    k_pool.index_copy_(0, batch.write_slots, k)
    v_pool.index_copy_(0, batch.write_slots, v)
    decode = batch.decode
    if decode is not None and decode.rows is None:
        return _attend_decode(q, k_pool, v_pool, decode, scale)
    if decode is None and len(batch.sequences) == 1:
        return _attend_sequence(q, k, v, k_pool, v_pool, batch.sequences[0], scale)
    out = q.new_empty(batch.num_rows, q.shape[1] * q.shape[2])
    if decode is not None:
        assert decode.rows is not None
        out.index_copy_(0, decode.rows, _attend_decode(q.index_select(0, decode.rows), k_pool, v_pool, decode, scale))
    for seq in batch.sequences:
        out[seq.rows] = _attend_sequence(q, k, v, k_pool, v_pool, seq, scale)
    return out


def _attend_sequence(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor,
                     seq: SequenceRows, scale: float | None) -> torch.Tensor:
    """One sequence's rows over its keys -> [rows, H * hd]."""
    if seq.keys is None:  # from position 0: its own fresh keys, as transformers' prefill
        keys, values = k[seq.rows], v[seq.rows]
    elif isinstance(seq.keys, slice):  # one run of blocks: a view of the pool
        keys, values = k_pool[seq.keys], v_pool[seq.keys]
    else:
        keys, values = k_pool.index_select(0, seq.keys), v_pool.index_select(0, seq.keys)
    return causal_attention(q[seq.rows].transpose(0, 1), keys.transpose(0, 1), values.transpose(0, 1),
                            seq.start_pos, scale)


def _attend_decode(q: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor, decode: DecodeRows,
                   scale: float | None) -> torch.Tensor:
    """q: [B, H, hd], one row per sequence -> [B, H * hd]."""
    shape = (*decode.gather.shape, *k_pool.shape[1:])  # [B, T, KV, hd]
    keys = k_pool.index_select(0, decode.gather.view(-1)).view(shape).transpose(1, 2)  # [B, KV, T, hd]
    values = v_pool.index_select(0, decode.gather.view(-1)).view(shape).transpose(1, 2)
    out = F.scaled_dot_product_attention(q.unsqueeze(2), keys, values, attn_mask=decode.mask, scale=scale,
                                         enable_gqa=q.shape[1] != keys.shape[1])
    return out.reshape(q.shape[0], -1)  # [B, H, 1, hd] -> [B, H * hd]
