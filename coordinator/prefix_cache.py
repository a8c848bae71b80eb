"""Prefix caching, the coordinator's side: it names every full KV block of a sequence by a hash of its tokens and
all tokens before it, tells the nodes which blocks to keep and which to evict, and keeps the picture of each node's
prefix cache that admission counts on (no I/O).

A request whose context starts with blocks that every node of a lane's route holds starts there: its first slice
names those blocks (``SequenceSlice.prefix_hashes``) and computes only the rest, on every stage. The nodes never
evict on their own, so this picture is theirs (it is dropped with a node's Forward stream, which takes the node's
cache with it): a cached block counts once on its node, and a request's reservation less the blocks it starts on.
Blocks are evicted least recently used first when admission needs the room; blocks a running request started on
stay. Within one use, later blocks count as older, so a prefix is evicted from its end and never loses its start.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Iterable, Sequence

from protos.data_structures import KV_BLOCK_SIZE

_SEED = b"shardline-prefix-v1"


def chain_hashes(token_ids: Sequence[int], known: list[int], blocks: int, block_size: int = KV_BLOCK_SIZE
                 ) -> list[int]:
    """The hashes of the first ``blocks`` full blocks of ``token_ids``, extending ``known`` (those already computed
    for the same tokens) in place; each is a 64-bit hash of its block's tokens and the hash before it."""
    while len(known) < blocks:
        i = len(known)
        digest = hashlib.blake2b(known[-1].to_bytes(8, "little") if known else _SEED, digest_size=8)
        for t in token_ids[i * block_size:(i + 1) * block_size]:
            digest.update(t.to_bytes(4, "little", signed=True))
        known.append(int.from_bytes(digest.digest(), "little"))
    return known[:blocks]


class PrefixIndex:
    """Which blocks each node's prefix cache holds, least recently used first, and evictions not yet sent."""

    def __init__(self, block_size: int = KV_BLOCK_SIZE) -> None:
        self.block_size = block_size
        self._nodes: dict[str, OrderedDict[int, None]] = {}
        self._evicted: dict[str, list[int]] = {}
        self.queried_tokens = 0  # prompt tokens of admitted requests that could use the cache ...
        self.hit_tokens = 0  # ... and those found in it

    def count_query(self, prompt_tokens: int, cached_tokens: int) -> None:
        self.queried_tokens += prompt_tokens
        self.hit_tokens += cached_tokens

    @property
    def hit_rate(self) -> float:
        return self.hit_tokens / self.queried_tokens if self.queried_tokens else 0.0

    def blocks_on(self, node: str) -> int:
        return len(self._nodes.get(node, ()))

    def tokens_on(self, node: str) -> int:
        return self.blocks_on(node) * self.block_size

    def hits(self, route: Sequence[str], hashes: Sequence[int]) -> int:
        """How many of ``hashes``, from the first, every node of ``route`` holds."""
        count = 0
        for h in hashes:
            if not route or any(h not in self._nodes.get(n, ()) for n in route):
                break
            count += 1
        return count

    def touch(self, route: Iterable[str], hashes: Sequence[int]) -> None:
        """``hashes`` were just used on ``route``: the most recently used now, the first of them the newest."""
        for node in route:
            cached = self._nodes.get(node, OrderedDict())
            for h in reversed(hashes):
                if h in cached:
                    cached.move_to_end(h)

    def add(self, node: str, hashes: Sequence[int]) -> list[int]:
        """Blocks a node is told to keep; those it lacks yet (it skips the others, as here), newest first."""
        cached = self._nodes.setdefault(node, OrderedDict())
        new = [h for h in hashes if h not in cached]
        self.touch([node], hashes)
        for h in reversed(new):
            cached[h] = None
        return new

    def evictable(self, node: str, pinned: set[int]) -> int:
        return sum(1 for h in self._nodes.get(node, ()) if h not in pinned)

    def evict(self, node: str, count: int, pinned: set[int]) -> list[int]:
        """Drops the ``count`` least recently used blocks of ``node`` that are not ``pinned``; queued for the node."""
        cached = self._nodes.get(node, OrderedDict())
        gone = [h for h in cached if h not in pinned][:count]
        for h in gone:
            del cached[h]
        self._evicted.setdefault(node, []).extend(gone)
        return gone

    def discard(self, node: str, hashes: Sequence[int]) -> None:
        """Evicts these blocks of ``node`` (those it has), whatever their age."""
        cached = self._nodes.get(node, OrderedDict())
        gone = [h for h in hashes if cached.pop(h, 0) is None]
        self._evicted.setdefault(node, []).extend(gone)

    def take_evictions(self) -> dict[str, list[int]]:
        taken, self._evicted = self._evicted, {}
        return taken

    def forget(self, node: str) -> None:
        """The node's cache is gone (its Forward stream closed, or it was lost)."""
        self._nodes.pop(node, None)
        self._evicted.pop(node, None)
