"""Per-sequence KV cache for one shard's layers, bounded by a token budget."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch


class CacheFull(Exception):
    """Not enough KV budget left; the message carries the numbers."""


class UnknownSequence(KeyError):
    """No cache for this sequence id on this node."""


@dataclass(slots=True)
class SequenceCache:
    seq_id: str
    owner: int  # the Forward stream that created it; its caches go when that stream closes
    capacity: int  # tokens reserved
    k: torch.Tensor  # [L_local, KV, capacity, hd]
    v: torch.Tensor
    length: int = 0  # positions filled
    generator: torch.Generator | None = None  # per-request seeded sampling (last stage)
    last_used: float = field(default_factory=time.monotonic)  # the KVCache's clock, at allocate and every get


DEFAULT_MAX_SEQUENCES = 1024


class KVCache:
    def __init__(self, num_layers: int, num_kv_heads: int, head_dim: int, capacity_tokens: int,
                 dtype: torch.dtype, device: torch.device, max_sequences: int = DEFAULT_MAX_SEQUENCES,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.num_layers, self.num_kv_heads, self.head_dim = num_layers, num_kv_heads, head_dim
        self.capacity_tokens = capacity_tokens
        self.max_sequences = max_sequences
        self.dtype, self.device = dtype, device
        self._seqs: dict[str, SequenceCache] = {}
        self._lock = threading.Lock()
        self._clock = clock

    @property
    def bytes_per_token(self) -> int:
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * torch.empty(0, dtype=self.dtype).element_size()

    @property
    def used_tokens(self) -> int:
        return sum(s.capacity for s in self._seqs.values())

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
        freed = sum(self._seqs[s].capacity for s in released)
        free = self.capacity_tokens - self.used_tokens + freed
        if need > free:
            raise CacheFull(
                f"KV cache full: {len(requests)} new sequence(s) need {need} tokens but only {free} of "
                f"{self.capacity_tokens} are free ({self.num_sequences} sequences hold {self.used_tokens})"
            )

    def allocate(self, seq_id: str, max_tokens: int, owner: int) -> SequenceCache:
        with self._lock:
            if seq_id in self._seqs:
                raise ValueError(f"sequence {seq_id!r} already has a KV cache; release it first")
            self.check_fits({seq_id: max_tokens})
            shape = (self.num_layers, self.num_kv_heads, max_tokens, self.head_dim)
            entry = SequenceCache(seq_id, owner, max_tokens,
                                  torch.empty(shape, dtype=self.dtype, device=self.device),
                                  torch.empty(shape, dtype=self.dtype, device=self.device))
            entry.last_used = self._clock()
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
            return self._seqs.pop(seq_id, None) is not None

    def release_owner(self, owner: int) -> int:
        with self._lock:
            gone = [s for s, e in self._seqs.items() if e.owner == owner]
            for s in gone:
                del self._seqs[s]
            return len(gone)

    def release_idle(self, idle_s: float) -> list[str]:
        """Frees caches untouched for idle_s seconds (a coordinator that vanished without closing its stream, or
        lost track of a sequence whose Release failed). Every batch touching a sequence calls get()."""
        cutoff = self._clock() - idle_s
        with self._lock:
            gone = [s for s, e in self._seqs.items() if e.last_used < cutoff]
            for s in gone:
                del self._seqs[s]
            return gone
