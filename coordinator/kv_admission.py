"""Where a waiting request goes, counting KV room and the prefix cache (no I/O): the lane whose route holds the most
of its context's first blocks and has room for the rest, else the least loaded lane where evicting cached blocks
that no running request uses (least recently used first, coordinator/prefix_cache.py) makes room."""

from __future__ import annotations

from typing import TYPE_CHECKING

from coordinator.prefix_cache import PrefixIndex
from coordinator.request import Request
from protos.data_structures import KV_BLOCK_SIZE

if TYPE_CHECKING:
    from coordinator.scheduler import Scheduler

AFFINITY_SLACK = 2  # a lane this many sequences busier than the least loaded is not chosen for its cached blocks


def place(sched: Scheduler, req: Request, sizes: list[int], reserved: dict[str, int]
          ) -> tuple[int, list[int]] | None:
    """The lane for ``req`` (of the usable ones; ``sizes``: sequences per lane) and the cached blocks it starts on
    there: of the lanes with room, the one with the most of them among those at most AFFINITY_SLACK sequences busier
    than the least loaded (so a shared prefix does not pile every request onto one replica), else the least loaded;
    failing that, one where evicting unused cached blocks makes room. ``reserved`` (KV tokens per node) counts the
    evictions."""
    prefix = sched.prefix
    hashes = cacheable_blocks(prefix, req)
    lanes = sorted(sched.usable, key=lambda lane: (sizes[lane], lane))
    cached = {x: hashes[:prefix.hits(sched.lane_routes[x], hashes)] if prefix and hashes else [] for x in lanes}
    lightest = min((sizes[x] for x in lanes), default=0)
    lanes.sort(key=lambda x: -len(cached[x]) if sizes[x] <= lightest + AFFINITY_SLACK else 0)
    for x in lanes:
        if sched.lane_has_room(x, req.reserved_tokens - len(cached[x]) * KV_BLOCK_SIZE, reserved):
            return x, cached[x]
    if prefix is None:
        return None
    pinned = {h for r in sched.running for h in r.prefix_hashes}
    for x in lanes:
        need = req.reserved_tokens - len(cached[x]) * KV_BLOCK_SIZE
        keep = pinned | set(cached[x])
        short = {n: reserved.get(n, 0) + need - sched.node_capacity.get(n, sched.kv_capacity_tokens)
                 for n in sched.lane_routes[x]}
        if short and all(over <= prefix.evictable(n, keep) * KV_BLOCK_SIZE for n, over in short.items()):
            for n, over in short.items():
                if over > 0:
                    gone = prefix.evict(n, -(-over // KV_BLOCK_SIZE), keep)
                    reserved[n] = reserved.get(n, 0) - len(gone) * KV_BLOCK_SIZE
            return x, cached[x]
    return None


def cacheable_blocks(prefix: PrefixIndex | None, req: Request) -> list[int]:
    """The names of the context blocks ``req`` could start on: its full blocks before its newest token."""
    if prefix is None or not req.use_prefix_cache or req.prompt_logprobs:
        return []
    return req.context_hashes((req.num_context_tokens - 1) // KV_BLOCK_SIZE)
