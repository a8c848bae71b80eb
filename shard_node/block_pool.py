"""Which blocks of a shard's KV pool are free, and how many holders each taken block has (sequences, the prefix
cache). Free blocks are kept as runs of consecutive blocks, merged as they come back, so a sequence usually gets
one run (best fit) and its attention reads a plain view of the pool. Not thread-safe: its KVCache holds the lock.
Block 0 is never given out (padded reads point at it)."""

from __future__ import annotations

import bisect


class PoolExhausted(Exception):
    """Fewer free blocks than asked for; the message carries the numbers."""


class BlockPool:
    def __init__(self, num_blocks: int) -> None:
        self.num_blocks = num_blocks
        self.runs: list[tuple[int, int]] = [(1, num_blocks)]  # free (first block, count), by first block
        self.free = num_blocks
        self._refs = [0] * (num_blocks + 1)

    @property
    def used(self) -> int:
        return self.num_blocks - self.free

    def take(self, count: int) -> list[int]:
        """``count`` free blocks, one holder each: the smallest run that holds them all, else the largest runs."""
        if count > self.free:
            raise PoolExhausted(f"KV pool out of blocks: {count} wanted, {self.free} of {self.num_blocks} free")
        taken: list[int] = []
        while len(taken) < count:
            need = count - len(taken)
            fits = [i for i, (_, n) in enumerate(self.runs) if n >= need]
            i = (min(fits, key=lambda j: self.runs[j][1]) if fits
                 else max(range(len(self.runs)), key=lambda j: self.runs[j][1]))
            start, n = self.runs[i]
            got = min(n, need)
            taken.extend(range(start, start + got))
            if got == n:
                del self.runs[i]
            else:
                self.runs[i] = (start + got, n - got)
        for block in taken:
            self._refs[block] = 1
        self.free -= count
        return taken

    def share(self, block: int) -> None:
        """One more holder of a taken block."""
        self._refs[block] += 1

    def drop(self, block: int) -> None:
        """One holder less; a block nobody holds is free again."""
        self._refs[block] -= 1
        if self._refs[block] == 0:
            self._give(block)

    def _give(self, block: int) -> None:
        """A free block back among the runs, merged with the runs around it."""
        i = bisect.bisect_left(self.runs, (block, 0))
        start, count = block, 1
        if i > 0 and sum(self.runs[i - 1]) == block:  # the run before ends right here
            i -= 1
            start, count = self.runs[i][0], self.runs[i][1] + 1
            del self.runs[i]
        if i < len(self.runs) and self.runs[i][0] == start + count:  # the run after starts right after
            count += self.runs[i][1]
            del self.runs[i]
        self.runs.insert(i, (start, count))
        self.free += 1
