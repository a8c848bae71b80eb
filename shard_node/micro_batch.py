"""What a shard runs: a micro-batch of sequence slices, and what comes out of it (tensors on the node's side of the
wire; shard_node/forward_session.py decodes them from the protobuf)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from protos.data_structures import SamplingParams, TokenLogprobs
from shard_node.sampler import TokenHistory


class BatchError(ValueError):
    """A micro-batch that cannot run; ``code`` is the gRPC status name to report."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class SliceInput:
    seq_id: str
    start_pos: int
    num_tokens: int
    max_total_tokens: int
    sampling: SamplingParams
    recent_token_ids: tuple[int, ...] = ()
    no_sample: bool = False  # an intermediate prefill chunk: the last stage samples nothing for it
    invalid: str = ""  # why this slice cannot run (e.g. its sampling parameters); it fails alone
    provisional: bool = False  # a draft model's step: all its positions may be overwritten later
    draft_token_ids: tuple[int, ...] = ()  # speculative decoding: its last rows are these drafts, verified on the
    # last stage (shard_node/speculative.py)
    prompt_tokens: int = 0  # recent_token_ids[:prompt_tokens] is the prompt (presence and frequency penalties)
    score_token_ids: tuple[int, ...] = ()  # last stage: the log-probability of each at its row, from the first
    grammar: str = ""  # last stage: structured output from here on (shard_node/grammar.py) ...
    grammar_token_ids: tuple[int, ...] = ()  # ... past the output so far
    fork_from: str = ""  # a new cache on this sequence's first start_pos positions (shard_node/slice_checks.py)
    prefix_hashes: tuple[int, ...] = ()  # a new cache on these blocks of the prefix cache (shard_node/kv_cache.py)

    @property
    def starts_cache(self) -> bool:
        """Its first slice: a new cache (from position 0, forked, or on cached prefix blocks)."""
        return self.start_pos == 0 or bool(self.fork_from) or bool(self.prefix_hashes)

    @property
    def new_tokens(self) -> int:
        """KV positions a new cache reserves: max_total_tokens less the cached blocks it starts on."""
        return self.max_total_tokens - (self.start_pos if self.prefix_hashes else 0)

    @property
    def plain_greedy(self) -> bool:
        """Its token is the argmax of its raw logits (nothing changes them, no grammar from this slice)."""
        return self.sampling.is_greedy and not self.sampling.changes_logits and not self.grammar

    def rows_with_logits(self, rows: slice, all_last: bool) -> list[int]:
        """Of its ``rows`` (in the micro-batch), those whose logits the last stage needs: the scoring ones, then the
        newest and the drafts when it samples (or else its last, when every slice's last logits are asked for)."""
        scored = list(range(rows.start, rows.start + len(self.score_token_ids)))
        if not self.no_sample:
            return scored + list(range(rows.stop - 1 - len(self.draft_token_ids), rows.stop))
        return scored + [rows.stop - 1] if all_last and len(scored) < rows.stop - rows.start else scored

    def history(self) -> TokenHistory:
        """The tokens it has seen before its first draft (for its penalties)."""
        return TokenHistory(list(self.recent_token_ids), self.prompt_tokens)


@dataclass(frozen=True)
class MicroBatch:
    slices: tuple[SliceInput, ...]
    token_ids: torch.Tensor | None  # first stage: [sum(num_tokens)] int64
    hidden: torch.Tensor | None  # other stages: [sum(num_tokens), D]
    return_logits: bool = False
    release_seq_ids: tuple[str, ...] = ()
    keep_blocks: tuple[KeepBlocks, ...] = ()  # prefix caching, before anything else: blocks to keep ...
    evict_hashes: tuple[int, ...] = ()  # ... then cached blocks to drop


@dataclass(frozen=True)
class KeepBlocks:
    """Blocks first_block, first_block + 1, ... of a sequence to keep in the prefix cache under these hashes."""

    seq_id: str
    first_block: int
    hashes: tuple[int, ...]


@dataclass(frozen=True)
class RowError:
    """One sequence of a micro-batch that could not run; the rest of the batch did."""

    seq_id: str
    code: str  # a gRPC status name
    message: str


@dataclass
class BatchResult:
    hidden: torch.Tensor | None = None  # [rows of the slices that ran, D] for non-last stages
    next_token_ids: list[int] = field(default_factory=list)  # last stage: one per slice; -1 for no_sample / failed
    logits: torch.Tensor | None = None  # [slices that ran and wanted a token, vocab] when asked
    forward_seconds: float = 0.0
    row_errors: list[RowError] = field(default_factory=list)  # failed sequences, in batch order
    accepted_drafts: list[int] = field(default_factory=list)  # last stage: per slice, its drafts accepted
    logprobs: list[TokenLogprobs | None] = field(default_factory=list)  # last stage: per slice, when it asks
    scored: list[TokenLogprobs | None] = field(default_factory=list)  # last stage: per slice, of score_token_ids
