"""Whether a slice can run on this shard's KV cache, and the cache it runs on: a new sequence (start_pos 0), one that
goes on where its cache ends (or within its unverified drafts), a fork that starts on another sequence's prefix, or
one that starts on blocks of the prefix cache (``prefix_hashes``, shard_node/kv_cache.py).

A fork (``fork_from``) shares the source's full blocks up to its ``start_pos`` (a multiple of the block size, at most
what the source holds for sure), so n choices of one prompt, or a request that repeats a cached prefix, compute only
what is new: nothing is copied, and the blocks stay until every sequence holding them is released."""

from __future__ import annotations

from protos.data_structures import PREFIX_MISSING
from shard_node.kv_cache import KVCache, SequenceCache
from shard_node.micro_batch import SliceInput

Problem = tuple[str, str]  # (gRPC status name, message)


def cache_problem(kv: KVCache, releasing: tuple[str, ...], s: SliceInput, owner: int,
                  max_positions: int) -> Problem | None:
    """What is wrong with ``s``'s cache on this shard (``releasing``: caches freed before the batch runs)."""
    where = f"sequence {s.seq_id!r}"
    if s.starts_cache:
        if s.seq_id in kv and s.seq_id not in releasing:
            return "FAILED_PRECONDITION", f"{where} already has a KV cache; release it first"
        if not s.start_pos + s.num_tokens <= s.max_total_tokens <= max_positions:
            return "INVALID_ARGUMENT", (f"{where}: max_total_tokens must be in [start_pos + num_tokens="
                                        f"{s.start_pos + s.num_tokens}, {max_positions}], got {s.max_total_tokens}")
        if s.prefix_hashes:
            return _prefix_problem(kv, s, owner)
        return _fork_problem(kv, releasing, s, owner) if s.fork_from else None
    if s.seq_id not in kv or s.seq_id in releasing:
        return "FAILED_PRECONDITION", (f"{where} has no KV cache on this node (start_pos {s.start_pos} > 0 needs an "
                                       "earlier prefill)")
    entry = kv.get(s.seq_id)
    if entry.owner != owner:
        return "FAILED_PRECONDITION", f"{where} belongs to another Forward stream"
    if s.start_pos != entry.length and not (entry.draft_start is not None
                                            and entry.draft_start <= s.start_pos <= entry.length):
        drafts = "" if entry.draft_start is None else f" (drafts from position {entry.draft_start})"
        return "FAILED_PRECONDITION", (f"{where}: start_pos {s.start_pos} but the cache holds {entry.length} "
                                       f"positions{drafts}")
    if s.start_pos + s.num_tokens > entry.capacity:
        return "FAILED_PRECONDITION", (f"{where}: positions up to {s.start_pos + s.num_tokens} exceed the "
                                       f"{entry.capacity} tokens reserved at prefill")
    return None


def _fork_problem(kv: KVCache, releasing: tuple[str, ...], s: SliceInput, owner: int) -> Problem | None:
    where = f"sequence {s.seq_id!r}"
    if s.fork_from not in kv or s.fork_from in releasing or kv.get(s.fork_from).owner != owner:
        return "FAILED_PRECONDITION", (f"{where}: fork_from {s.fork_from!r} has no KV cache on this node for this "
                                       "Forward stream")
    source = kv.get(s.fork_from)
    held = source.length if source.draft_start is None else source.draft_start
    if s.start_pos % kv.block_size or s.start_pos > held:
        return "INVALID_ARGUMENT", (f"{where}: a fork starts at a multiple of the KV block size ({kv.block_size}) "
                                    f"within the {held} positions {s.fork_from!r} holds, not at {s.start_pos}")
    return None


def _prefix_problem(kv: KVCache, s: SliceInput, owner: int) -> Problem | None:
    where = f"sequence {s.seq_id!r}"
    if s.fork_from or s.start_pos != len(s.prefix_hashes) * kv.block_size:
        return "INVALID_ARGUMENT", (f"{where}: a slice on {len(s.prefix_hashes)} cached blocks starts at "
                                    f"{len(s.prefix_hashes) * kv.block_size} (blocks of {kv.block_size}), not at "
                                    f"{s.start_pos}, and forks from nothing else")
    missing = kv.missing_prefix(owner, s.prefix_hashes)
    if missing is not None:
        return "ABORTED", (f"{where}: block {missing} of its prefix is {PREFIX_MISSING} (evicted, or kept by another "
                           "Forward stream); send the prefix again")
    return None


def cache_of(kv: KVCache, s: SliceInput, owner: int) -> SequenceCache:
    """The cache ``s`` runs on (checked by cache_problem): new, forked, or its own."""
    if s.fork_from:
        return kv.fork(kv.get(s.fork_from), s.seq_id, owner, s.max_total_tokens, length=s.start_pos)
    if s.starts_cache:
        return kv.allocate(s.seq_id, s.max_total_tokens, owner, s.prefix_hashes)
    return kv.get(s.seq_id)
