"""One generation through the coordinator, as text: incremental detokenization and stop strings.

``await gen.start()`` sends the request and waits until the coordinator accepted it, so errors such as
a full queue, an unknown model or a prompt that cannot fit arrive before any response is sent.
``gen.chunks()`` then yields text deltas; the last one has ``finish_reason``. Stop strings are applied
on the text, and no part of a stop string is ever yielded. ``gen.cancel()`` (also called when
``chunks()`` is closed early) stops generation and frees the KV cache on every node.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field, replace
from typing import Literal

import grpc

from api.backend import Backend
from api.errors import ApiError, redact_paths
from api.logprobs import ChosenToken, resolve
from protos import common_pb2, coordinator_pb2, wire
from protos.data_structures import SamplingParams, TokenLogprobs

logger = logging.getLogger(__name__)

FinishReason = Literal["stop", "length"]  # OpenAI's
FINISH_REASONS: dict[str, FinishReason] = {"eos": "stop", "stop": "stop", "length": "length"}  # coordinator -> OpenAI


@dataclass
class TextChunk:
    text: str
    finish_reason: FinishReason | Literal[""] = ""  # "" until the last chunk
    prompt_tokens: int = 0
    completion_tokens: int = 0  # tokens generated so far
    queue_seconds: float = 0.0  # time the request waited for KV room before its prefill started
    stage_seconds: list[float] = field(default_factory=list)  # per stage compute time so far
    route: list[str] = field(default_factory=list)  # node of each stage that carries it now
    failovers: int = 0  # times it moved to replicas after a node was lost
    draft_proposed: int = 0  # speculative decoding so far: draft tokens verified ...
    draft_accepted: int = 0  # ... and accepted
    cached_tokens: int = 0  # prompt tokens served from the prefix cache
    logprobs: list[ChosenToken] = field(default_factory=list)  # of the tokens since the chunk before (when asked)


def _failure(stop: str) -> list[int]:
    """KMP failure function: fail[i] = length of the longest proper prefix of stop[:i + 1] that is also its suffix."""
    fail = [0] * len(stop)
    k = 0
    for i in range(1, len(stop)):
        while k and stop[i] != stop[k]:
            k = fail[k - 1]
        if stop[i] == stop[k]:
            k += 1
        fail[i] = k
    return fail


class StopScanner:
    """Finds stop strings in text that arrives in deltas, keeping per stop string how much of it the text seen so
    far ends with (Knuth-Morris-Pratt). Feeding a delta costs O(len(delta) * len(stops)) steps, amortised, however
    long the text is or was held back: the held-back text is never searched again."""

    def __init__(self, stops: list[str]) -> None:
        self.stops = stops
        self._fail = [_failure(s) for s in stops]
        self._matched = [0] * len(stops)  # per stop: the longest prefix of it that the text ends with
        self.steps = 0  # comparisons made so far (tests count work with it)

    def feed(self, delta: str) -> int | None:
        """Adds delta to the text; returns where the earliest stop string found starts, counted back from the end of
        the text (so it starts at len(text) - returned), or None while no stop string is complete."""
        start: int | None = None
        for k, stop in enumerate(self.stops):
            fail, j = self._fail[k], self._matched[k]
            for i, c in enumerate(delta):
                self.steps += 1
                while j and c != stop[j]:
                    j = fail[j - 1]
                    self.steps += 1
                if c == stop[j]:
                    j += 1
                if j == len(stop):  # ends at delta[i]: starts len(delta) - i - 1 + len(stop) before the end
                    back = len(delta) - i - 1 + len(stop)
                    start = back if start is None else max(start, back)
                    j = fail[j - 1]
                    break
            self._matched[k] = j
        return start

    @property
    def held_back(self) -> int:
        """Length of the longest tail of the text that could still grow into a stop string."""
        return max(self._matched, default=0)


@dataclass
class Detokenizer:
    """Incremental detokenization of one generation through the tokenizer service: ids from the detokenizer's
    prefix_offset on (all it still needs) and the offsets into them."""

    backend: Backend
    model: str
    window: list[int] = field(default_factory=list)
    prefix: int = 0
    read: int = 0

    async def text_of(self, ids: list[int]) -> str:
        """The text that ``ids`` (the next generated ones) add; never half a character."""
        self.window.extend(ids)
        delta, prefix, read = await self.backend.decode_incremental(self.model, self.window, self.prefix, self.read)
        self.window, self.prefix, self.read = self.window[prefix:], 0, read - prefix  # the ids before are done
        return delta

    def copy(self) -> Detokenizer:
        return Detokenizer(self.backend, self.model, list(self.window), self.prefix, self.read)


async def tokens_to_stop(detok: Detokenizer, scanner: StopScanner, ids: list[int]) -> int:
    """How many of ``ids`` (one event's tokens, several when drafts were accepted) it takes to complete the stop
    string that all of them complete, from ``detok`` and ``scanner`` as they were before them."""
    for used in range(1, len(ids)):
        if copy.deepcopy(scanner).feed(await detok.copy().text_of(ids[:used])) is not None:
            return used
    return len(ids)


@dataclass
class GenerationTimes:
    started: float = field(default_factory=time.perf_counter)
    first_token: float | None = None
    finished: float | None = None

    @property
    def ttft_s(self) -> float | None:
        return None if self.first_token is None else self.first_token - self.started

    def decode_rate(self, tokens: int) -> float:
        """Tokens per second after the first (the steady decode rate)."""
        end = self.finished or time.perf_counter()
        if self.first_token is None or tokens < 2 or end <= self.first_token:
            return 0.0
        return (tokens - 1) / (end - self.first_token)


class Generation:
    def __init__(self, backend: Backend, model: str, prompt_ids: list[int], max_tokens: int,
                 sampling: SamplingParams, stops: list[str], request_id: str, ignore_eos: bool = False,
                 speculative: bool = True, prompt_logprobs: bool = False, grammar: str = "") -> None:
        self.backend = backend
        self.model = model
        self.prompt_ids = prompt_ids
        self.max_tokens = max_tokens
        self.sampling = sampling
        self.stops = stops
        self.request_id = request_id
        self.ignore_eos = ignore_eos
        self.speculative = speculative  # False: the coordinator decodes one token per step for it
        self.prompt_logprobs = prompt_logprobs  # score the prompt too (arrives with the first tokens)
        self.grammar = grammar  # structured output (api/structured.py): the grammar the output stays inside
        self.prompt_scores: list[ChosenToken] | None = None  # of prompt tokens 1 .. n-1, once they came
        self.times = GenerationTimes()
        self._call: grpc.aio.UnaryStreamCall | None = None

    async def start(self) -> None:
        """Sends the request; returns once the coordinator accepted it, raises ApiError otherwise."""
        self._call = self.backend.coordinator.generate(self.model, self.prompt_ids, self.max_tokens, self.sampling,
                                                       self.request_id, ignore_eos=self.ignore_eos,
                                                       speculative=self.speculative,
                                                       prompt_logprobs=self.prompt_logprobs, grammar=self.grammar)
        try:
            await self._read()
        except BaseException:
            self.cancel()
            raise

    async def _read(self) -> coordinator_pb2.GenerateResponse:
        assert self._call is not None
        try:
            reply = await self._call.read()
        except grpc.aio.AioRpcError as e:
            raise self.backend.coordinator_error(e) from None
        if reply is grpc.aio.EOF:
            raise ApiError(502, "the coordinator closed the stream without a finish reason")
        return reply

    def cancel(self) -> None:
        if self._call is not None:
            self._call.cancel()  # no-op when finished

    async def chunks(self) -> AsyncGenerator[TextChunk, None]:
        """Text deltas; the last chunk has finish_reason. Raises ApiError (503 when a stage failed)."""
        detok = Detokenizer(self.backend, self.model)
        pending = ""  # decoded text not yet sent (could be the start of a stop string)
        scanner = StopScanner(self.stops)
        n_prompt = len(self.prompt_ids)
        logprobs: list[ChosenToken] = []  # of tokens whose text is not yet sent
        try:
            while True:
                reply = await self._read()
                if reply.finish_reason in ("error", "cancelled"):
                    why = redact_paths(reply.error or reply.finish_reason, (self.backend.config.model_cache_dir,))
                    raise ApiError(503, f"generation failed: {why}")  # may reach a started stream: no server paths
                if reply.token_ids and self.times.first_token is None:
                    self.times.first_token = time.perf_counter()
                stats = TextChunk("", prompt_tokens=n_prompt, completion_tokens=reply.completion_tokens,
                                  queue_seconds=reply.queue_seconds, stage_seconds=list(reply.stage_seconds),
                                  route=list(reply.route), failovers=reply.failovers,
                                  draft_proposed=reply.draft_proposed, draft_accepted=reply.draft_accepted,
                                  cached_tokens=reply.cached_tokens)
                back = None
                logprobs += await self._read_logprobs(reply)
                stats.logprobs = logprobs
                ids = list(reply.token_ids)
                before = (detok.copy(), copy.deepcopy(scanner)) if len(ids) > 1 else None
                if ids:
                    delta = await detok.text_of(ids)
                    pending += delta
                    back = scanner.feed(delta)
                if back is not None:
                    unused = len(ids) - (await tokens_to_stop(*before, ids) if before else len(ids))
                    self.times.finished = time.perf_counter()  # (tokens after the stop string's end: not counted)
                    kept = logprobs[:len(logprobs) - unused] if reply.HasField("logprobs") else logprobs
                    yield replace(stats, text=pending[:len(pending) - back], finish_reason="stop",
                                  completion_tokens=stats.completion_tokens - unused, logprobs=kept)
                    return
                if reply.finish_reason:
                    self.times.finished = time.perf_counter()
                    yield replace(stats, text=pending, finish_reason=FINISH_REASONS.get(reply.finish_reason, "stop"))
                    return
                keep = scanner.held_back
                out, pending = pending[:len(pending) - keep], pending[len(pending) - keep:]
                if out:
                    yield replace(stats, text=out)
                    logprobs = []
        finally:
            self.cancel()  # stops generation when the client left or a stop string hit

    async def _read_logprobs(self, reply: coordinator_pb2.GenerateResponse) -> list[ChosenToken]:
        """The log-probabilities of the reply's tokens (when asked), and once, the prompt's (``prompt_scores``)."""
        if reply.HasField("prompt_logprobs"):
            scored = self.prompt_ids[1:]
            self.prompt_scores = await resolve(self.backend, self.model, scored,
                                               self._logprobs(reply.prompt_logprobs, len(scored)))
        if not reply.HasField("logprobs"):
            return []
        return await resolve(self.backend, self.model, reply.token_ids,
                             self._logprobs(reply.logprobs, len(reply.token_ids)))

    @staticmethod
    def _logprobs(msg: common_pb2.TokenLogprobs, tokens: int) -> TokenLogprobs:
        try:
            lp = wire.logprobs_from_proto(msg) or TokenLogprobs()
        except wire.WireError as e:
            raise ApiError(502, f"the coordinator sent malformed logprobs: {e}") from None
        if len(lp.logprobs) != tokens:
            raise ApiError(502, f"the coordinator sent {len(lp.logprobs)} logprobs for {tokens} tokens")
        return lp

    async def text(self) -> tuple[str, TextChunk]:
        """The whole completion and its last chunk (finish reason, usage)."""
        parts: list[str] = []
        last: TextChunk | None = None
        async for chunk in self.chunks():
            parts.append(chunk.text)
            last = chunk
        assert last is not None
        return "".join(parts), last
