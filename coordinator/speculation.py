"""Speculative decoding on the coordinator: draft tokens for a sequence, and how many to propose next.

Drafts come from the sequence itself (prompt lookup, an n-gram index): the newest ``n`` tokens are looked up among
the earlier ones (longest ``n`` first; the occurrence just past where the sequence is copying from first, else the
most recent), and the tokens that followed that occurrence are proposed. Copying is common (a rewrite, an edit of
given code, an answer quoting its sources), and the lookup costs a few dictionary probes per step. The drafts go
through every stage as one chunk after the newest token; the last stage keeps the prefix its own sampling agrees
with (shard_node/speculative.py), so the output is exactly that of plain decoding.

How many to propose adapts per sequence (``DraftState``): every draft accepted lets it propose two more next time;
a partly accepted step, one fewer. A second step in a row with none accepted makes the sequence decode plainly for a
while (1, 2, 4, ... up to 64 tokens), so a stream whose drafts keep missing costs almost nothing over plain
decoding.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from protos.speculation_spec import DEFAULT_NUM_SPECULATIVE_TOKENS, DEFAULT_SPECULATIVE

NGRAM_MIN, NGRAM_MAX = 2, 4  # lengths of the suffix looked up anywhere
SOURCE_WINDOW = 4  # how far past where the sequence copies from a lone newest token is looked up
START_DRAFTS = 4  # a new sequence's first proposals
MAX_BACKOFF_TOKENS = 64


@dataclass(frozen=True)
class SpeculationConfig:
    method: str = DEFAULT_SPECULATIVE  # ngram | draft | off
    max_draft_tokens: int = DEFAULT_NUM_SPECULATIVE_TOKENS
    draft_model: str = ""  # with method "draft": the served model that proposes (coordinator/draft_model.py)

    @property
    def enabled(self) -> bool:
        return self.method != "off" and self.max_draft_tokens > 0


def span(prompt: list[int], output: list[int], start: int, end: int) -> list[int]:
    """Tokens [start, end) of prompt + output, without building the whole context (it may be long)."""
    cut = len(prompt)
    if start >= cut:
        return output[start - cut:end - cut]
    return prompt[start:end] if end <= cut else prompt[start:] + output[:end - cut]


@dataclass
class NgramIndex:
    """Every position of a sequence (prompt + output) where each n-gram (n = 1 .. ``max_n``) appeared with a token
    after it: n-gram -> the positions of those tokens, ascending. Each position is indexed once, as the sequence
    grows.

    A lookup also keeps where the sequence is copying from (``source``: the position whose token it would write
    next if it went on copying, moved along as tokens are added). An edit (a corrected word, a renamed name) breaks
    every longer n-gram for a few tokens; near the source, even the newest token alone finds where to go on."""

    min_n: int = NGRAM_MIN
    max_n: int = NGRAM_MAX
    window: int = SOURCE_WINDOW
    table: dict[tuple[int, ...], list[int]] = field(default_factory=dict)
    indexed: int = 1  # positions p < indexed are in the table as continuations
    anchor: tuple[int, int] | None = None  # (a position copied from, the sequence's length then)

    def update(self, prompt: list[int], output: list[int]) -> None:
        length = len(prompt) + len(output)
        if self.indexed >= length:
            return
        offset = max(self.indexed - self.max_n, 0)
        tokens = span(prompt, output, offset, length)
        for p in range(self.indexed, length):
            for n in range(1, min(self.max_n, p) + 1):
                self.table.setdefault(tuple(tokens[p - n - offset:p - offset]), []).append(p)
        self.indexed = length

    def source(self, length: int) -> int | None:
        """Where a copy that went on token by token since the last proposal would be now."""
        return None if self.anchor is None else self.anchor[0] + length - self.anchor[1]

    def lookup(self, prompt: list[int], output: list[int], limit: int) -> list[int]:
        """``limit`` tokens that followed an earlier occurrence of the longest suffix found, or none. Among its
        occurrences, the one at most ``window`` tokens past the source wins, otherwise the latest; the newest token
        alone (n = 1) counts only next to the source. When the occurrence is fewer than ``limit`` tokens back, the
        text since is taken to repeat."""
        self.update(prompt, output)
        length = len(prompt) + len(output)
        tail = span(prompt, output, max(length - self.max_n, 0), length)
        source = self.source(length)
        for n in range(min(self.max_n, length), 0, -1):
            at = self._pick(self.table.get(tuple(tail[len(tail) - n:]), []), source, near_only=n < self.min_n)
            if at is not None:
                drafts = span(prompt, output, at, min(at + limit, length))
                while len(drafts) < limit:  # the match is recent: the text repeats itself with this period
                    drafts.append(drafts[len(drafts) - (length - at)])
                self.anchor = (at, length)
                return drafts
        return []

    def _pick(self, positions: list[int], source: int | None, near_only: bool) -> int | None:
        if source is not None:
            first = bisect.bisect_left(positions, source)
            if first < len(positions) and positions[first] <= source + self.window:
                return positions[first]
        return None if near_only or not positions else positions[-1]


@dataclass
class ModelDrafts:
    """A sequence's drafts from a draft model (coordinator/draft_model.py): what it proposed for which context, and
    how much of the context the draft model's KV cache holds (as far as it agrees with the sequence)."""

    seq_id: str  # the sequence's KV cache on the draft model's nodes
    route: tuple[str, ...] = ()  # the shards' name, then those nodes (another: the cache is built again)
    cached: int = 0  # positions of the context in that cache
    ready: tuple[int, tuple[int, ...]] | None = None  # (context length they follow, the drafts)


@dataclass
class DraftState:
    """One sequence's speculation: where its drafts come from (its own n-grams, or a draft model), its current draft
    length, and what it proposed and got accepted."""

    max_draft_tokens: int
    model: ModelDrafts | None = None  # None: drafts from the n-gram index
    index: NgramIndex = field(default_factory=NgramIndex)
    draft_tokens: int = START_DRAFTS  # proposed next (at most)
    resume_at: int = 0  # output length before which it decodes plainly (after a step with nothing accepted)
    misses: int = 0  # steps in a row with nothing accepted
    proposed: int = 0
    accepted: int = 0
    steps: int = 0  # verify steps

    def __post_init__(self) -> None:
        self.draft_tokens = min(self.draft_tokens, self.max_draft_tokens)

    def propose(self, prompt: list[int], output: list[int], limit: int) -> list[int]:
        """Drafts to verify after the newest token of prompt + output (at most ``limit``; none while backing off,
        and from a draft model only once it proposed for this very context)."""
        if len(output) < self.resume_at or limit < 1:
            return []
        if self.model is not None:
            ready = self.model.ready
            return list(ready[1][:limit]) if ready is not None and ready[0] == len(prompt) + len(output) else []
        return self.index.lookup(prompt, output, min(self.draft_tokens, limit))

    def would_propose(self, prompt: list[int], output: list[int]) -> bool:
        if self.model is not None:
            return len(output) >= self.resume_at
        return bool(self.propose(prompt, output, 1))

    def wants_model_drafts(self, num_context: int, num_output: int) -> bool:
        """A draft model should propose for this context first (it has not yet, and the sequence is not backing
        off)."""
        return (self.model is not None and num_output >= self.resume_at
                and (self.model.ready is None or self.model.ready[0] != num_context))

    def confirmed(self, num_computed: int) -> None:
        """The sequence's KV caches hold ``num_computed`` positions that are final: the draft model's cache agrees up
        to there at most (its own drafts beyond may have been rejected), and its drafts are used up."""
        if self.model is not None:
            self.model.cached = min(self.model.cached, num_computed)
            self.model.ready = None

    def back_off(self, num_output: int) -> None:
        """Nothing accepted (or no drafts: the draft model is down or refused): from the second time in a row, plain
        decoding for a while, twice as long each time."""
        self.misses += 1
        if self.misses > 1:
            self.resume_at = num_output + min(2 ** (self.misses - 2), MAX_BACKOFF_TOKENS)

    def record(self, proposed: int, accepted: int, num_output: int) -> None:
        """A verify step came back: ``accepted`` of ``proposed`` drafts; the sequence now has ``num_output``."""
        self.proposed += proposed
        self.accepted += accepted
        self.steps += 1
        if accepted == proposed:
            self.draft_tokens = min(self.draft_tokens + 2, self.max_draft_tokens)
            self.misses = 0
        elif accepted > 0:
            self.draft_tokens = max(self.draft_tokens - 1, 1)
            self.misses = 0
        else:
            self.draft_tokens = max(self.draft_tokens - 1, 1)
            self.back_off(num_output)
