"""One generation through the coordinator, as text: incremental detokenization and stop strings.

``await gen.start()`` sends the request and waits until the coordinator accepted it, so errors such as
a full queue, an unknown model or a prompt that cannot fit arrive before any response is sent.
``gen.chunks()`` then yields text deltas; the last one has ``finish_reason``. Stop strings are applied
on the text, and no part of a stop string is ever yielded. ``gen.cancel()`` (also called when
``chunks()`` is closed early) stops generation and frees the KV cache on every node.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc

from api.backend import Backend
from api.errors import ApiError
from protos import coordinator_pb2
from protos.data_structures import SamplingParams

logger = logging.getLogger(__name__)

FINISH_REASONS = {"eos": "stop", "stop": "stop", "length": "length"}  # coordinator -> OpenAI


@dataclass
class TextChunk:
    text: str
    finish_reason: str = ""  # "" | stop | length (OpenAI's)
    prompt_tokens: int = 0
    completion_tokens: int = 0  # tokens generated so far
    queue_seconds: float = 0.0  # time the request waited for KV room before its prefill started
    stage_seconds: list[float] = field(default_factory=list)  # per stage compute time so far
    route: list[str] = field(default_factory=list)  # node of each stage that carries it now
    failovers: int = 0  # times it moved to replicas after a node was lost


def held_back(text: str, stops: list[str]) -> int:
    """Length of the longest tail of text that could still grow into a stop string."""
    longest = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:n]):
                longest = max(longest, n)
                break
    return longest


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
                 sampling: SamplingParams, stops: list[str], request_id: str, ignore_eos: bool = False) -> None:
        self.backend = backend
        self.model = model
        self.prompt_ids = prompt_ids
        self.max_tokens = max_tokens
        self.sampling = sampling
        self.stops = stops
        self.request_id = request_id
        self.ignore_eos = ignore_eos
        self.times = GenerationTimes()
        self._call: grpc.aio.UnaryStreamCall | None = None

    async def start(self) -> None:
        """Sends the request; returns once the coordinator accepted it, raises ApiError otherwise."""
        self._call = self.backend.coordinator.generate(self.model, self.prompt_ids, self.max_tokens, self.sampling,
                                                       self.request_id, ignore_eos=self.ignore_eos)
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

    async def chunks(self) -> AsyncIterator[TextChunk]:
        """Text deltas; the last chunk has finish_reason. Raises ApiError (503 when a stage failed)."""
        ids: list[int] = []
        prefix = read = 0
        pending = ""  # decoded text not yet sent (could be the start of a stop string)
        n_prompt = len(self.prompt_ids)
        try:
            while True:
                reply = await self._read()
                if reply.finish_reason in ("error", "cancelled"):
                    raise ApiError(503, f"generation failed: {reply.error or reply.finish_reason}")
                if reply.token_ids and self.times.first_token is None:
                    self.times.first_token = time.perf_counter()
                stats = dict(prompt_tokens=n_prompt, completion_tokens=reply.completion_tokens,
                             queue_seconds=reply.queue_seconds, stage_seconds=list(reply.stage_seconds),
                             route=list(reply.route), failovers=reply.failovers)
                if reply.token_ids:
                    ids.extend(reply.token_ids)
                    delta, prefix, read = await self.backend.decode_incremental(self.model, ids, prefix, read)
                    pending += delta
                hit = min(((pending.find(s), s) for s in self.stops if s in pending), default=None)
                if hit is not None:
                    self.times.finished = time.perf_counter()
                    yield TextChunk(pending[:hit[0]], "stop", **stats)
                    return
                if reply.finish_reason:
                    self.times.finished = time.perf_counter()
                    yield TextChunk(pending, FINISH_REASONS.get(reply.finish_reason, "stop"), **stats)
                    return
                keep = held_back(pending, self.stops)
                out, pending = pending[:len(pending) - keep], pending[len(pending) - keep:]
                if out:
                    yield TextChunk(out, "", **stats)
        finally:
            self.cancel()  # stops generation when the client left or a stop string hit

    async def text(self) -> tuple[str, TextChunk]:
        """The whole completion and its last chunk (finish reason, usage)."""
        parts: list[str] = []
        last: TextChunk | None = None
        async for chunk in self.chunks():
            parts.append(chunk.text)
            last = chunk
        assert last is not None
        return "".join(parts), last
