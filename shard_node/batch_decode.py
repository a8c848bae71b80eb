"""A micro-batch as the node runs it, decoded from its protobuf: every repeated field's length checked before it
becomes a Python list, each slice's sampling parameters checked (a bad one fails that slice alone)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from protos import shard_pb2, wire
from protos.data_structures import SamplingParams
from shard_node.kv_cache import KVCache
from shard_node.micro_batch import BatchError, KeepBlocks, MicroBatch, SliceInput
from shard_node.runner import ShardRunner


def decode_batch(runner: ShardRunner, req: shard_pb2.ForwardRequest, seqs: list[shard_pb2.SequenceSlice],
                 hidden: torch.Tensor | None, given_ids: list[int] | None) -> MicroBatch:
    """The micro-batch, with every repeated field's length checked before it becomes a Python list."""
    max_seqs = runner.kv.max_sequences
    max_ctx = runner.spec.max_positions
    if len(req.seqs) > max_seqs or len(req.release_seq_ids) > 2 * max_seqs:
        raise BatchError("INVALID_ARGUMENT", f"a micro-batch carries at most {max_seqs} sequences and "
                         f"{2 * max_seqs} releases, got {len(req.seqs)} and {len(req.release_seq_ids)}")
    keep, evict = prefix_cache_updates(runner.kv, req.keep_blocks, req.evict_block_hashes)
    for s in req.seqs:
        if not 0 <= s.num_tokens <= max_ctx or max(len(s.recent_token_ids), len(s.draft_token_ids),
                                                   len(s.prefix_hashes)) > max_ctx:
            raise BatchError("INVALID_ARGUMENT", f"sequence {s.seq_id[:64]!r}: num_tokens must be in [1, "
                             f"{max_ctx}] and recent_token_ids and draft_token_ids at most {max_ctx} long (the "
                             f"context), got {s.num_tokens}, {len(s.recent_token_ids)} and {len(s.draft_token_ids)}")
    total = sum(s.num_tokens for s in seqs)
    ids = list(req.token_ids) if given_ids is None else given_ids
    if runner.is_first and len(ids) != total:
        raise BatchError("INVALID_ARGUMENT", f"first stage needs token_ids of length {total} (the sum of "
                         f"num_tokens), got {len(ids)}")
    slices = tuple(_slice(s) for s in seqs)
    token_ids = torch.tensor(ids, dtype=torch.int64) if runner.is_first else None
    return MicroBatch(slices, token_ids, hidden, req.return_logits, tuple(req.release_seq_ids), keep, evict)


def prefix_cache_updates(kv: KVCache, keep: Sequence[shard_pb2.KeepBlocks], evict: Sequence[int]
                         ) -> tuple[tuple[KeepBlocks, ...], tuple[int, ...]]:
    """A micro-batch's (or Release's) prefix-cache keeps and evictions, their sizes checked against the pool."""
    blocks = kv.num_blocks
    if len(keep) > 2 * kv.max_sequences or sum(len(k.hashes) for k in keep) > blocks or len(evict) > blocks:
        raise BatchError("INVALID_ARGUMENT", f"prefix cache updates name at most {blocks} blocks to keep (of at most "
                         f"{2 * kv.max_sequences} sequences) and {blocks} to evict")
    return tuple(KeepBlocks(k.seq_id, k.first_block, tuple(k.hashes)) for k in keep), tuple(evict)


def _slice(s: shard_pb2.SequenceSlice) -> SliceInput:
    """One sequence's slice; invalid sampling parameters fail that sequence only (INVALID_ARGUMENT)."""
    try:
        sampling, invalid = wire.sampling_from_proto(s.sampling), ""
    except ValueError as e:
        sampling, invalid = SamplingParams(), str(e)
    return SliceInput(s.seq_id, s.start_pos, s.num_tokens, s.max_total_tokens, sampling,
                      tuple(s.recent_token_ids), s.no_sample, invalid, s.provisional, tuple(s.draft_token_ids),
                      s.prompt_tokens, tuple(s.score_token_ids), s.grammar, tuple(s.grammar_token_ids), s.fork_from,
                      tuple(s.prefix_hashes))
