"""One shard's KV cache: a pool of fixed-size blocks preallocated at load, and a block table per sequence.

The pool holds every layer's keys and values as [layers, slots, kv_heads, head_dim] with slot = block *
block_size + offset; a sequence's position p lives in slot ``blocks[p // block_size] * block_size + p %
block_size``. Nothing is allocated per sequence: a new sequence takes the blocks of what it reserved (prompt +
max_tokens) from the pool's free runs, as one run of consecutive blocks when one fits (best fit), so on CPU its
attention reads a plain view of the pool; only when the free space is fragmented does it get several runs and
its keys are gathered. Blocks go back when their reference count drops to zero (``fork`` lets a second sequence
share a prefix's full blocks), merging with free neighbours.

Prefix caching: the coordinator names full blocks by a hash of their tokens and every token before them (``keep``:
the prefix cache holds a reference), and a new sequence may start on cached blocks (``allocate`` with prefix
hashes). The coordinator decides what is cached and what is evicted (least recently used), and counts the same way
as ``used_tokens`` does: each cached block once, and each sequence's reservation less the positions it took from the
cache; the node never evicts on its own, except when the Forward stream that kept the blocks closes.

Admission counts tokens, as the coordinator does. The pool has enough blocks for the token budget plus one partly
filled block per sequence, so a sequence admitted by tokens always gets its blocks. On CPU the untouched part of
the pool is only address space; on CUDA it is real. Block 0 is never given out: padded reads point at its first
slot, kept at zero.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from protos.data_structures import KV_BLOCK_SIZE
from shard_node.block_pool import BlockPool, PoolExhausted

if TYPE_CHECKING:
    from shard_node.grammar import SequenceGrammar

BLOCK_SIZE = KV_BLOCK_SIZE  # positions per block
PAD_SLOT = 0  # block 0 is never given out: padded reads of a batch point at its first slot, kept at zero
DEFAULT_MAX_SEQUENCES = 1024


class CacheFull(Exception):
    """Not enough KV budget left; the message carries the numbers."""


class UnknownSequence(KeyError):
    """No cache for this sequence id on this node."""


@dataclass(slots=True)
class SequenceCache:
    seq_id: str
    owner: int  # the Forward stream that created it; its caches go when that stream closes
    capacity: int  # tokens reserved
    blocks: list[int] = field(default_factory=list)  # the block table: pool blocks holding positions in order
    first_slot: int | None = None  # slot of position 0 when the blocks are one run (positions in consecutive slots)
    length: int = 0  # positions filled
    draft_start: int | None = None  # speculative decoding: positions from here to ``length`` hold drafts not yet
    # known to be accepted; the next micro-batch may start anywhere in [draft_start, length] (overwriting the rest)
    generator: torch.Generator | None = None  # per-request seeded sampling (last stage)
    grammar: SequenceGrammar | None = None  # structured output (last stage)
    last_used: float = field(default_factory=time.monotonic)  # the KVCache's clock, at allocate and every get
    shared_tokens: int = 0  # its first positions, taken from the prefix cache: not part of its reservation


def blocks_for(tokens: int, block_size: int = BLOCK_SIZE) -> int:
    return -(-tokens // block_size)


class KVCache:
    def __init__(self, num_layers: int, num_kv_heads: int, head_dim: int, capacity_tokens: int,
                 dtype: torch.dtype, device: torch.device, max_sequences: int = DEFAULT_MAX_SEQUENCES,
                 clock: Callable[[], float] = time.monotonic, block_size: int = BLOCK_SIZE) -> None:
        self.num_layers, self.num_kv_heads, self.head_dim = num_layers, num_kv_heads, head_dim
        self.capacity_tokens = capacity_tokens
        self.max_sequences = max_sequences
        self.block_size = block_size
        self.dtype, self.device = dtype, device
        # the token budget in blocks, plus one partly filled block for every sequence it can hold at once
        self.num_blocks = blocks_for(capacity_tokens, block_size) + min(max_sequences, capacity_tokens)
        shape = (num_layers, (self.num_blocks + 1) * block_size, num_kv_heads, head_dim)
        self.k = torch.empty(shape, dtype=dtype, device=device)  # normal tensors: writable in and out of
        self.v = torch.empty(shape, dtype=dtype, device=device)  # inference mode
        self.k[:, PAD_SLOT].zero_()  # what padded reads see: zeros (unwritten slots may hold NaN, and a masked
        self.v[:, PAD_SLOT].zero_()  # key's weight 0 times NaN is NaN)
        self._pool = BlockPool(self.num_blocks)
        self._seqs: dict[str, SequenceCache] = {}
        self._cached: dict[int, tuple[int, int]] = {}  # prefix cache: block hash -> (block, owner that kept it)
        self._lock = threading.Lock()
        self._clock = clock

    @property
    def bytes_per_token(self) -> int:
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * torch.empty(0, dtype=self.dtype).element_size()

    @property
    def used_tokens(self) -> int:
        """Reserved by sequences and held by the prefix cache (what admission counts)."""
        return self.reserved_tokens + self.cached_tokens

    @property
    def reserved_tokens(self) -> int:
        """Reserved by live sequences, less the positions they took from the prefix cache."""
        return sum(s.capacity - s.shared_tokens for s in self._seqs.values())

    @property
    def cached_blocks(self) -> int:
        return len(self._cached)

    @property
    def cached_tokens(self) -> int:
        return len(self._cached) * self.block_size

    @property
    def used_blocks(self) -> int:
        return self._pool.used

    @property
    def num_sequences(self) -> int:
        return len(self._seqs)

    def __contains__(self, seq_id: str) -> bool:
        return seq_id in self._seqs

    def check_fits(self, requests: dict[str, int], releasing: tuple[str, ...] = ()) -> None:
        """Raises CacheFull unless all of {seq_id: tokens} fit together once ``releasing`` is freed."""
        need = sum(requests.values())
        released = [s for s in set(releasing) if s in self._seqs]
        held = self.num_sequences - len(released) + len(requests)
        if held > self.max_sequences:
            raise CacheFull(f"{len(requests)} new sequence(s) would make {held} on this shard; it holds at most "
                            f"{self.max_sequences} at once (limits.max_sequences_per_shard)")
        freed = sum(self._seqs[s].capacity - self._seqs[s].shared_tokens for s in released)
        free = self.capacity_tokens - self.used_tokens + freed
        if need > free:
            raise CacheFull(
                f"KV cache full: {len(requests)} new sequence(s) need {need} tokens but only {free} of "
                f"{self.capacity_tokens} are free ({self.num_sequences} sequences hold {self.used_tokens}; "
                f"{self.used_blocks} of {self.num_blocks} blocks of {self.block_size} in use)"
            )

    def allocate(self, seq_id: str, max_tokens: int, owner: int, prefix_hashes: tuple[int, ...] = ()
                 ) -> SequenceCache:
        """Reserves max_tokens for a new sequence and takes their blocks (one run when one fits); with
        ``prefix_hashes``, its first blocks are those cached blocks (shared, not copied) and it holds their positions
        already."""
        with self._lock:
            if seq_id in self._seqs:
                raise ValueError(f"sequence {seq_id!r} already has a KV cache; release it first")
            missing = self.missing_prefix(owner, prefix_hashes)
            if missing is not None:
                raise UnknownSequence(f"block {missing} of the prefix is not in this node's prefix cache")
            shared_tokens = len(prefix_hashes) * self.block_size
            self.check_fits({seq_id: max_tokens - shared_tokens})
            shared = [self._cached[h][0] for h in prefix_hashes]
            for block in shared:
                self._pool.share(block)
            own = self._take(blocks_for(max_tokens, self.block_size) - len(shared))
            entry = SequenceCache(seq_id, owner, max_tokens, shared + own, length=shared_tokens,
                                  last_used=self._clock(), shared_tokens=shared_tokens)
            entry.first_slot = self._first_slot(entry.blocks)
            self._seqs[seq_id] = entry
            return entry

    def missing_prefix(self, owner: int, prefix_hashes: tuple[int, ...]) -> int | None:
        """The index of the first of these blocks that this owner's prefix cache lacks (None: it has them all)."""
        return next((i for i, h in enumerate(prefix_hashes) if self._cached.get(h, (0, -1))[1] != owner), None)

    def keep(self, seq_id: str, first_block: int, hashes: list[int]) -> int:
        """Puts the sequence's blocks first_block, first_block + 1, ... in the prefix cache under ``hashes`` (a hash
        already cached, or a block not yet full, is skipped; an unknown sequence keeps nothing); how many were kept."""
        with self._lock:
            entry = self._seqs.get(seq_id)
            if entry is None or first_block < 0:
                return 0
            full = entry.length // self.block_size
            kept = 0
            for block_index, h in enumerate(hashes, start=first_block):
                if block_index >= full:
                    break
                if h not in self._cached:
                    block = entry.blocks[block_index]
                    self._pool.share(block)
                    self._cached[h] = (block, entry.owner)
                    kept += 1
            return kept

    def evict(self, hashes: list[int]) -> int:
        """Drops these blocks from the prefix cache (unknown hashes are ignored); a block no sequence holds is free."""
        with self._lock:
            gone = [self._cached.pop(h) for h in hashes if h in self._cached]
            for block, _ in gone:
                self._pool.drop(block)
            return len(gone)

    def fork(self, source: SequenceCache, seq_id: str, owner: int, max_tokens: int,
             length: int | None = None) -> SequenceCache:
        """A new sequence that shares the source's full blocks (a common prefix, its first ``length`` positions, a
        multiple of the block size; default: as many as fit): their reference counts go up, and the new sequence's
        length is the shared positions. Its own positions go into new blocks."""
        with self._lock:
            if seq_id in self._seqs:
                raise ValueError(f"sequence {seq_id!r} already has a KV cache; release it first")
            self.check_fits({seq_id: max_tokens})
            shared = source.blocks[:min(source.length, max_tokens) // self.block_size if length is None
                                   else length // self.block_size]
            for block in shared:
                self._pool.share(block)
            own = self._take(blocks_for(max_tokens, self.block_size) - len(shared))
            entry = SequenceCache(seq_id, owner, max_tokens, shared + own, length=len(shared) * self.block_size,
                                  last_used=self._clock())
            entry.first_slot = self._first_slot(entry.blocks)
            self._seqs[seq_id] = entry
            return entry

    def get(self, seq_id: str) -> SequenceCache:
        try:
            entry = self._seqs[seq_id]
        except KeyError:
            raise UnknownSequence(seq_id) from None
        entry.last_used = self._clock()
        return entry

    def release(self, seq_id: str) -> bool:
        with self._lock:
            entry = self._seqs.pop(seq_id, None)
            if entry is not None:
                self._drop_blocks(entry)
            return entry is not None

    def release_owner(self, owner: int) -> int:
        with self._lock:
            gone = [s for s, e in self._seqs.items() if e.owner == owner]
            for s in gone:
                self._drop_blocks(self._seqs.pop(s))
            for h in [h for h, (_, o) in self._cached.items() if o == owner]:
                self._pool.drop(self._cached.pop(h)[0])
            return len(gone)

    def release_idle(self, idle_s: float) -> list[str]:
        """Frees caches untouched for idle_s seconds (a coordinator that vanished without closing its stream, or
        lost track of a sequence whose Release failed). Every batch touching a sequence calls get()."""
        cutoff = self._clock() - idle_s
        with self._lock:
            gone = [s for s, e in self._seqs.items() if e.last_used < cutoff]
            for s in gone:
                self._drop_blocks(self._seqs.pop(s))
            return gone

    def slots(self, entry: SequenceCache, start: int, end: int) -> list[int]:
        """Pool slots of the sequence's positions [start, end)."""
        bs, blocks = self.block_size, entry.blocks
        return [blocks[p // bs] * bs + p % bs for p in range(start, end)]

    def _first_slot(self, blocks: list[int]) -> int | None:
        if blocks and blocks == list(range(blocks[0], blocks[0] + len(blocks))):
            return blocks[0] * self.block_size
        return None

    def _drop_blocks(self, entry: SequenceCache) -> None:
        """Under the lock: one reference less on each of the sequence's blocks; a block nobody holds is free."""
        for block in entry.blocks:
            self._pool.drop(block)
        entry.blocks = []

    def _take(self, count: int) -> list[int]:
        try:
            return self._pool.take(count)
        except PoolExhausted as e:  # the pool is sized so that admitted sequences always get their blocks
            raise CacheFull(str(e)) from None
