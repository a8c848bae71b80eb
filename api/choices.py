"""The choices of one OpenAI request (``n``, and ``best_of`` for completions): one generation each over the same
prompt. The first starts alone; once its first text is out, its prompt's KV blocks are in the prefix cache of every
stage (coordinator/prefix_cache.py), and the others start on them instead of prefilling the prompt again. With a
seed, choice i samples with seed + i: the answer as a whole is reproducible, and its choices differ."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.responses import StreamingResponse

from api.errors import ApiError, error_body
from api.generation import FinishReason, Generation, TextChunk
from api.logprobs import ChosenToken
from api.openai_responses import UsageInfo
from api.streaming import event_stream, sse, until_disconnected
from protos.data_structures import SamplingParams

logger = logging.getLogger(__name__)

# (choice index, text, its tokens' log-probabilities, finish reason or None, usage or None) -> one chunk's JSON
MakeChunk = Callable[[int, str, list[ChosenToken], FinishReason | None, UsageInfo | None], dict[str, Any]]


@dataclass
class Collected:
    """A whole choice: its text, its tokens' log-probabilities (when asked) and its last chunk."""

    index: int
    text: str
    logprobs: list[ChosenToken]
    last: TextChunk

    @property
    def cumulative_logprob(self) -> float:
        return sum(t.chosen.logprob for t in self.logprobs)


@dataclass
class Choice:
    index: int
    gen: Generation
    chunks: AsyncGenerator[TextChunk, None]
    first: TextChunk = dataclasses.field(default_factory=lambda: TextChunk(""))

    async def start(self) -> None:
        """Sends its request and waits for its first text (or its end)."""
        await self.gen.start()
        self.first = await anext(self.chunks)

    async def collect(self) -> Collected:
        parts, logprobs, last = [self.first.text], list(self.first.logprobs), self.first
        while not last.finish_reason:
            last = await anext(self.chunks)
            parts.append(last.text)
            logprobs += last.logprobs
        return Collected(self.index, "".join(parts), logprobs, last)


def choice_sampling(sampling: SamplingParams, index: int) -> SamplingParams:
    """Choice ``index``'s sampling: the request's, its seed (if any) moved on by the index."""
    if sampling.seed is None or index == 0:
        return sampling
    return dataclasses.replace(sampling, seed=(sampling.seed + index) % 2**64)


async def start_choices(request: Request, gens: list[Generation]) -> list[Choice]:
    """Starts the first choice, then the others once its first text is out; all cancelled if the client leaves or
    one fails to start."""
    choices = [Choice(i, g, g.chunks()) for i, g in enumerate(gens)]

    async def run() -> None:
        await choices[0].start()
        await asyncio.gather(*(c.start() for c in choices[1:]))

    try:
        await until_disconnected(request, run())
    except BaseException:
        for c in choices:
            c.gen.cancel()
        raise
    return choices


async def collect_choices(request: Request, choices: list[Choice]) -> list[Collected]:
    """Every choice whole (in index order); cancelled if the client leaves."""
    async def run() -> list[Collected]:
        return list(await asyncio.gather(*(c.collect() for c in choices)))

    try:
        return await until_disconnected(request, run())
    finally:
        for c in choices:
            await c.chunks.aclose()


def usage_of(lasts: list[TextChunk]) -> UsageInfo:
    """The request's usage: the prompt once (as the first choice saw it), every choice's completion tokens."""
    first = lasts[0]
    return UsageInfo.of(first.prompt_tokens, sum(c.completion_tokens for c in lasts),
                        sum(c.draft_proposed for c in lasts), sum(c.draft_accepted for c in lasts),
                        first.cached_tokens)


def log_done(gen: Generation, last: TextChunk) -> None:
    times = gen.times
    end = times.finished or times.started
    logger.info("request %s done: model=%s prompt=%d completion=%d finish=%s ttft=%s ms total=%.0f ms",
                gen.request_id, gen.model, last.prompt_tokens, last.completion_tokens, last.finish_reason,
                "-" if times.ttft_s is None else f"{times.ttft_s * 1000:.0f}", (end - times.started) * 1000)


def stream_choices(choices: list[Choice], include_usage: bool, make: MakeChunk,
                   openings: list[dict[str, Any] | None]) -> StreamingResponse:
    """SSE of OpenAI chunks, the choices' interleaved as their tokens come; ``make`` builds one chunk's JSON, and
    ``openings[i]`` (if any) goes first for choice i. A failure after the start arrives as an error event."""
    async def events() -> AsyncIterator[str]:
        out: asyncio.Queue[str | Exception | None] = asyncio.Queue()
        lasts: list[TextChunk | None] = [None] * len(choices)
        tasks = [asyncio.create_task(_pump(c, make, openings[c.index], out, lasts)) for c in choices]
        try:
            ended = 0
            while ended < len(choices):
                item = await out.get()
                if isinstance(item, Exception):
                    raise item
                if item is None:
                    ended += 1
                else:
                    yield item
            if include_usage:
                yield sse(make(0, "", [], None, usage_of([last for last in lasts if last is not None])))
        except ApiError as e:
            logger.warning("request %s failed mid-stream: %s", choices[0].gen.request_id, e.message)
            yield sse(error_body(e.status, e.message, e.param))
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for c in choices:
                await c.chunks.aclose()  # cancels the generations when the client went away
        yield "data: [DONE]\n\n"

    return event_stream(events())


async def _pump(c: Choice, make: MakeChunk, opening: dict[str, Any] | None, out: asyncio.Queue[str | Exception | None],
                lasts: list[TextChunk | None]) -> None:
    """Choice c's chunks into ``out``, then None (or the exception that ended it)."""
    try:
        if opening is not None:
            await out.put(sse(opening))
        chunk = c.first
        while True:
            if chunk.text or chunk.logprobs:
                await out.put(sse(make(c.index, chunk.text, chunk.logprobs, None, None)))
            if chunk.finish_reason:
                await out.put(sse(make(c.index, "", [], chunk.finish_reason, None)))
                lasts[c.index] = chunk
                log_done(c.gen, chunk)
                break
            chunk = await anext(c.chunks)
    except Exception as e:  # noqa: BLE001 - handed to the stream, which reports it and stops the others
        await out.put(e)
        return
    await out.put(None)
