"""What the coordinator owes a replica besides micro-batches: sequences to release and prefix-cache blocks to keep
or evict. They ride on the next micro-batch sent there (the node applies them first, keeps before evictions before
releases), or go in a Release call when no micro-batch is about to; each part is idempotent on the node, so what may
not have arrived is sent again."""

from __future__ import annotations

from dataclasses import dataclass, field

from protos import shard_pb2


@dataclass
class Upkeep:
    release: list[str] = field(default_factory=list)  # sequence ids whose KV caches go
    keep: list[shard_pb2.KeepBlocks] = field(default_factory=list)  # blocks into the prefix cache
    evict: list[int] = field(default_factory=list)  # cached blocks out of it

    def __bool__(self) -> bool:
        return bool(self.release or self.keep or self.evict)

    def add_to(self, message: shard_pb2.ForwardRequest | shard_pb2.ReleaseRequest) -> None:
        if isinstance(message, shard_pb2.ForwardRequest):
            message.release_seq_ids.extend(self.release)
        else:
            message.seq_ids.extend(self.release)
        message.keep_blocks.extend(self.keep)
        message.evict_block_hashes.extend(self.evict)
