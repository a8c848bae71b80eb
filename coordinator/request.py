"""One generation request: its tokens, its progress through the pipeline, and its output stream."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from enum import Enum, auto

from coordinator.prefix_cache import chain_hashes
from coordinator.speculation import DraftState
from protos.data_structures import KV_BLOCK_SIZE, SamplingParams, TokenLogprobs


class RequestStatus(Enum):
    WAITING = auto()
    RUNNING = auto()
    FINISHED = auto()


@dataclass(frozen=True)
class TokenEvent:
    token_ids: tuple[int, ...]
    finish_reason: str = ""  # eos | length | stop | cancelled | error
    error: str = ""
    logprobs: TokenLogprobs | None = None  # of token_ids, where the sampling asks
    prompt_logprobs: TokenLogprobs | None = None  # of the prompt's tokens after the first, once, where asked


@dataclass(slots=True, eq=False)
class Request:
    request_id: str
    seq_id: str  # id of this sequence's KV cache on every node
    prompt_ids: list[int]
    max_tokens: int
    sampling: SamplingParams
    stop_token_ids: frozenset[int]
    eos_token_ids: frozenset[int]  # empty when the client asked to ignore EOS
    output_ids: list[int] = field(default_factory=list)
    num_computed: int = 0  # positions already in the KV cache of every stage of its route
    num_scheduled: int = 0  # positions sent in micro-batches (computed, or in flight: >= num_computed)
    status: RequestStatus = RequestStatus.WAITING
    finish_reason: str = ""
    cancelled: bool = False
    lane: int = -1  # which of the engine's micro-batch lanes carries it (set at admission)
    batches_in_flight: int = 0  # micro-batches holding it that have not come back (prefill chunks: several)
    arrival_time: float = field(default_factory=time.monotonic)
    admitted_time: float | None = None  # left the waiting queue
    first_token_time: float | None = None
    last_token_time: float = 0.0
    finished_time: float | None = None
    stage_seconds: list[float] = field(default_factory=list)  # per stage: compute time of its micro-batches
    route_nodes: tuple[str, ...] = ()  # node of each stage that carries it now
    failovers: int = 0  # times its KV was rebuilt on another route after a node was lost
    failover_started: float | None = None  # when the last loss was seen; cleared at the next token
    events: asyncio.Queue[TokenEvent] = field(default_factory=asyncio.Queue)
    speculative: bool = True  # the caller allows speculative decoding (where the model has it on)
    drafting: DraftState | None = None  # speculative decoding (coordinator/speculation.py); None: plain decoding
    prompt_logprobs: bool = False  # the caller wants the prompt scored (log-probabilities of its tokens)
    grammar: str = ""  # structured output: the llguidance grammar its output must stay inside
    grammar_sent_to: str = ""  # the sequence id (KV caches) whose last stage has the grammar
    prompt_scores: dict[int, TokenLogprobs] | None = field(default_factory=dict)  # by chunk start; None: delivered
    use_prefix_cache: bool = True  # may start on cached blocks (not with prompt log-probabilities, nor after a miss)
    prefix_hashes: tuple[int, ...] = ()  # prefix caching: the cached blocks its sequence starts on (at admission)
    kept_blocks: int = 0  # its sequence's first blocks that the route's prefix caches hold (started on, or kept)
    cached_tokens: int = 0  # prompt positions found in the prefix cache at its first admission (usage)
    block_hashes: list[int] = field(default_factory=list)  # of its context's full blocks, computed as needed

    @property
    def in_flight(self) -> bool:
        """Part of a micro-batch that has not come back yet."""
        return self.batches_in_flight > 0

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_ids)

    @property
    def reserved_tokens(self) -> int:
        """KV positions reserved on each stage: the prompt plus every token it may generate."""
        return len(self.prompt_ids) + self.max_tokens

    @property
    def cached_positions(self) -> int:
        """Positions its sequence took from the prefix cache: its first slice starts there."""
        return len(self.prefix_hashes) * KV_BLOCK_SIZE

    @property
    def new_kv_tokens(self) -> int:
        """What its reservation adds on each stage: the cached blocks it starts on are counted already."""
        return self.reserved_tokens - self.cached_positions

    def context_hashes(self, blocks: int) -> list[int]:
        """The prefix-cache names of its context's first ``blocks`` full blocks."""
        return chain_hashes(self.context_ids(), self.block_hashes, blocks)

    def start_on_cache(self, hashes: list[int]) -> None:
        """Admitted on a route whose prefix caches hold these first blocks of its context: it starts after them."""
        self.prefix_hashes = tuple(hashes)
        self.kept_blocks = len(hashes)
        self.num_computed = self.num_scheduled = self.cached_positions
        if self.failovers == 0:
            self.cached_tokens = self.cached_positions

    @property
    def num_context_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)

    @property
    def prefill_done(self) -> bool:
        """Only the newest token is missing from the KV caches (the next step is a one-row decode)."""
        return self.num_computed >= self.num_context_tokens - 1 and self.num_computed >= len(self.prompt_ids)

    @property
    def next_step_needs_coordinator(self) -> bool:
        """Its next step cannot be sent ahead in a ring: it verifies drafts, or its penalties need the token in
        flight (which only the last stage and the first see)."""
        return self.sampling.needs_history or (self.drafting is not None
                                               and self.drafting.would_propose(self.prompt_ids, self.output_ids))

    def prompt_to_score(self, start: int, num_tokens: int) -> list[int]:
        """With prompt log-probabilities, the prompt tokens that rows [start, start + num_tokens) predict (none once
        they were delivered: a failover replays the prompt without scoring it again)."""
        if not self.prompt_logprobs or self.prompt_scores is None:
            return []
        return self.prompt_ids[start + 1:start + num_tokens + 1]

    def take_prompt_scores(self) -> TokenLogprobs | None:
        """The prompt's log-probabilities, once: when every chunk's are in (then never again)."""
        if not self.prompt_logprobs or self.prompt_scores is None or sum(
                len(lp.logprobs) for lp in self.prompt_scores.values()) < len(self.prompt_ids) - 1:
            return None
        joined = sum((self.prompt_scores[start] for start in sorted(self.prompt_scores)), TokenLogprobs())
        self.prompt_scores = None
        return joined

    def grammar_to_send(self, samples: bool) -> tuple[str, list[int]]:
        """The grammar (and the output it must move past) for a slice that samples on caches that lack it yet."""
        if not self.grammar or not samples or self.grammar_sent_to == self.seq_id:
            return "", []
        self.grammar_sent_to = self.seq_id
        return self.grammar, list(self.output_ids)

    def context_ids(self) -> list[int]:
        return self.prompt_ids + self.output_ids

    @property
    def queue_seconds(self) -> float:
        """Time spent waiting for admission (KV room), so far if still waiting."""
        return (self.admitted_time or time.monotonic()) - self.arrival_time

    @property
    def is_finished(self) -> bool:
        return self.status == RequestStatus.FINISHED

    @property
    def num_sent(self) -> int:
        """Positions computed or in flight."""
        return max(self.num_scheduled, self.num_computed)

    @property
    def prefill_pending(self) -> bool:
        """Context positions before the newest token are still to be sent (a prompt, or a replay after a
        failover); the next chunk may go while earlier ones are in flight (pipelined prefill)."""
        return self.num_sent < self.num_context_tokens and not self.prefill_done

    def next_input_ids(self, limit: int | None = None) -> list[int]:
        """Positions not yet sent (at most ``limit``): the prompt in chunks, then only the newest token at each
        decode step. After a failover the prompt and every generated token are replayed."""
        context = self.context_ids()
        end = len(context) if limit is None else min(len(context), self.num_sent + limit)
        return context[self.num_sent:end]

    def restart_on_new_route(self, seq_id: str, failover: bool = True) -> None:
        """Its KV is lost (a node of its route failed; ``failover`` False: it moves to a new layout of the model):
        replay prompt + output under a new sequence id."""
        self.seq_id = seq_id
        self.num_computed = self.num_scheduled = 0
        self.prefix_hashes, self.kept_blocks = (), 0
        self.batches_in_flight = 0
        self.lane = -1
        self.status = RequestStatus.WAITING
        if not failover:
            return
        self.failovers += 1
        if self.failover_started is None:
            self.failover_started = time.monotonic()

    def finish(self, reason: str, error: str = "", token_ids: tuple[int, ...] = (),
               logprobs: TokenLogprobs | None = None, prompt_logprobs: TokenLogprobs | None = None) -> None:
        """Marks the request done and sends its last event (with its last tokens, if any)."""
        if self.status == RequestStatus.FINISHED:
            return
        self.status = RequestStatus.FINISHED
        self.finished_time = time.monotonic()
        self.finish_reason = reason
        self.events.put_nowait(TokenEvent(token_ids, reason, error, logprobs, prompt_logprobs))
