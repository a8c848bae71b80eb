"""Attention of a ragged micro-batch against the shard's paged KV pool.

A micro-batch stacks the rows of several sequences in one [N, D] tensor: decode rows (one new token of a
sequence) and prefill chunks (several consecutive tokens of one sequence). The projections ran once on all rows;
here, for each layer:
- every row's new key and value go into the pool at their slots (one index_copy_ for the whole batch);
- every decode row attends in one call: its keys gathered from the pool through its block table into a
  [B, KV, T, hd] batch, the shorter sequences masked (no mask when every sequence has T keys, as at c = 1);
- each prefill chunk attends causally over its own prefix (its fresh keys alone when it starts at position 0,
  exactly as transformers' prefill does).
What depends on the batch only (slots, gather indices, the mask) is computed once per micro-batch in
``plan_batch`` and reused by every layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from shard_node.kv_cache import PAD_SLOT, KVCache, SequenceCache


@dataclass(frozen=True)
class PrefillChunk:
    rows: slice  # its rows in the batch
    start_pos: int  # position of its first row
    prefix_slots: torch.Tensor | None  # pool slots of positions [0, start_pos + rows) when start_pos > 0


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
    decode: DecodeRows | None
    prefill: tuple[PrefillChunk, ...]
    num_rows: int


def plan_batch(kv: KVCache, entries: list[SequenceCache], starts: list[int], lengths: list[int]) -> PagedBatch:
    """Takes the blocks the batch's new positions need and lays out its slots. Sequence i has rows
    [sum(lengths[:i]), ... + lengths[i]) at positions [starts[i], starts[i] + lengths[i])."""
    device = kv.k.device
    write: list[int] = []
    decoding: list[tuple[int, SequenceCache, int]] = []  # (row, cache, keys it attends to)
    prefill: list[PrefillChunk] = []
    row = 0
    for entry, start, n in zip(entries, starts, lengths):
        kv.extend(entry, start + n)
        write.extend(kv.slots(entry, start, start + n))
        if n == 1:
            decoding.append((row, entry, start + 1))
        else:
            prefix = torch.tensor(kv.slots(entry, 0, start + n), device=device) if start > 0 else None
            prefill.append(PrefillChunk(slice(row, row + n), start, prefix))
        row += n
    return PagedBatch(kv.k, kv.v, torch.tensor(write, device=device), _decode_rows(kv, decoding, row),
                      tuple(prefill), row)


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
    out = q.new_empty(batch.num_rows, q.shape[1] * q.shape[2])
    if decode is not None:
        assert decode.rows is not None
        out.index_copy_(0, decode.rows, _attend_decode(q.index_select(0, decode.rows), k_pool, v_pool, decode, scale))
    for chunk in batch.prefill:
        if chunk.prefix_slots is None:  # from position 0: its own fresh keys, as transformers' prefill
            keys, values = k[chunk.rows], v[chunk.rows]
        else:
            keys, values = k_pool.index_select(0, chunk.prefix_slots), v_pool.index_select(0, chunk.prefix_slots)
        out[chunk.rows] = causal_attention(q[chunk.rows].transpose(0, 1), keys.transpose(0, 1),
                                           values.transpose(0, 1), chunk.start_pos, scale)
    return out


def _attend_decode(q: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor, decode: DecodeRows,
                   scale: float | None) -> torch.Tensor:
    """q: [B, H, hd], one row per sequence -> [B, H * hd]."""
    shape = (*decode.gather.shape, *k_pool.shape[1:])  # [B, T, KV, hd]
    keys = k_pool.index_select(0, decode.gather.view(-1)).view(shape).transpose(1, 2)  # [B, KV, T, hd]
    values = v_pool.index_select(0, decode.gather.view(-1)).view(shape).transpose(1, 2)
    out = F.scaled_dot_product_attention(q.unsqueeze(2), keys, values, attn_mask=decode.mask, scale=scale,
                                         enable_gqa=q.shape[1] != keys.shape[1])
    return out.reshape(q.shape[0], -1)  # [B, H, 1, hd] -> [B, H * hd]
