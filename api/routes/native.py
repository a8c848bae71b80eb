"""Shardline's own routes: /api/model/process (the seed's), /api/model/stream (SSE for the web UI),
/api/tokenize and /api/detokenize."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, Request

from api.backend import Backend
from api.deps import get_backend
from api.errors import ApiError
from api.generation import Generation, TextChunk
from api.logprobs import ChosenToken, TokenLogprob, chat_logprobs
from api.openai_responses import SpeculativeUsage
from api.routes import ERROR_RESPONSES, JSON_ERROR_RESPONSES, json_data, named_events, sse_content
from api.schemas import (
    DetokenizeRequest,
    DetokenizeResponse,
    ErrorResponse,
    ProcessRequest,
    ProcessResponse,
    StageTime,
    StreamFirstToken,
    StreamStage,
    StreamStart,
    StreamToken,
    TokenizeRequest,
    TokenizeResponse,
    Usage,
)
from api.streaming import EventStreamResponse, event_stream, sse, until_disconnected
from api.structured import json_schema_grammar
from protos import coordinator_pb2
from protos.data_structures import SamplingParams

logger = logging.getLogger(__name__)
router = APIRouter(tags=["shardline"])

STREAM_DOC = """Server-sent events, each `event: <name>` + `data: <JSON>`:
- `start`: `{id, model, promptTokens, maxTokens, nodeCount, stages: [{node, address, layers}]}` once accepted
- `first_token`: `{timeToFirstToken, queueTime}` (milliseconds) when the first token arrives
- `token`: `{text, tokens, elapsedMs, tokensPerSecond}` for each text delta
- `done`: the same object as POST /api/model/process returns (text, timings, per-stage times, usage)
- `error`: `{error: {message, type, param, code}}` if generation fails after the stream started"""
STREAM_EVENTS = named_events({"start": json_data(StreamStart), "first_token": json_data(StreamFirstToken),
                              "token": json_data(StreamToken), "done": json_data(ProcessResponse),
                              "error": json_data(ErrorResponse)})


async def _prepare(backend: Backend, body: ProcessRequest) -> tuple[coordinator_pb2.ModelInfo, Generation]:
    info = await backend.model(body.model)
    await backend.check_queue(info)
    chat = await backend.has_chat_template(info.name) if body.chat is None else body.chat
    if body.history and not chat:
        raise ApiError(400, "history needs the chat template (chat: true, and a model that has one)", "history")
    if chat:
        messages = [*(t.model_dump() for t in body.history), {"role": "user", "content": body.text}]
        prompt_ids = await backend.encode_chat(info.name, messages, "text")
    else:
        prompt_ids = await backend.encode(info.name, body.text, param="text")
    max_tokens = backend.fit(info, len(prompt_ids), body.max_tokens, prompt_param="text")
    sampling = SamplingParams(body.temperature, body.top_p, body.top_k, body.seed, body.repetition_penalty,
                              logprobs=body.top_logprobs if body.logprobs else None)
    grammar = "" if body.json_schema is None else await json_schema_grammar(body.json_schema, "json_schema")
    assert isinstance(body.stop, list)  # ProcessRequest._check_stop stores every stop as a list
    gen = Generation(backend, info.name, prompt_ids, max_tokens, sampling, body.stop, uuid.uuid4().hex[:12],
                     body.ignore_eos, body.speculative, grammar=grammar)
    logger.info("request %s: %s model=%s prompt=%d tokens max_tokens=%d", gen.request_id, "process", info.name,
                len(prompt_ids), max_tokens)
    return info, gen


def _stages(info: coordinator_pb2.ModelInfo, seconds: list[float], route: list[str]) -> list[StageTime]:
    """One entry per layer range: the replica on ``route`` (the first replica of each range without one)."""
    out = []
    for i in range(info.num_stages):
        replicas = [s for s in info.stages if s.stage == i]
        s = next((r for r in replicas if i < len(route) and r.node_id == route[i]), replicas[0])
        out.append(StageTime(node=s.node_id, address=s.address, layers=[s.layers.start, s.layers.end],
                             seconds=round(seconds[i] if i < len(seconds) else 0.0, 4)))
    return out


def _result(info: coordinator_pb2.ModelInfo, gen: Generation, text: str, last: TextChunk,
            metadata: dict[str, Any], logprobs: list[TokenLogprob] | None = None) -> ProcessResponse:
    times = gen.times
    elapsed_ms = ((times.finished or time.perf_counter()) - times.started) * 1000
    ttft = times.ttft_s
    logger.info("request %s done: %d tokens, %s, %.0f ms", gen.request_id, last.completion_tokens,
                last.finish_reason, elapsed_ms)
    return ProcessResponse(
        text=text, processingTime=round(elapsed_ms, 1), queueTime=round(last.queue_seconds * 1000, 1),
        timeToFirstToken=None if ttft is None else round(ttft * 1000, 1),
        tokensPerSecond=round(times.decode_rate(last.completion_tokens), 2), nodeCount=info.num_stages,
        model=info.name, usage=Usage(prompt_tokens=last.prompt_tokens, completion_tokens=last.completion_tokens,
                                     cached_tokens=last.cached_tokens,
                                         speculative=SpeculativeUsage(proposed=last.draft_proposed,
                                                                      accepted=last.draft_accepted)),
        finish_reason=last.finish_reason, stages=_stages(info, last.stage_seconds, last.route),
        failovers=last.failovers, metadata=metadata, logprobs=logprobs)


@router.post("/api/model/process", response_model=ProcessResponse, responses=ERROR_RESPONSES)
async def process(body: ProcessRequest, request: Request, backend: Backend = Depends(get_backend)) -> ProcessResponse:
    """Generates a completion for `text` through the whole pipeline and returns it at once, with its timings."""
    info, gen = await _prepare(backend, body)

    async def run() -> tuple[str, TextChunk, list[ChosenToken]]:
        await gen.start()
        parts, logprobs = [], []
        async for chunk in gen.chunks():
            parts.append(chunk.text)
            logprobs += chunk.logprobs
            if chunk.finish_reason:
                return "".join(parts), chunk, logprobs
        raise ApiError(502, "the generation ended without a finish reason")

    text, last, logprobs = await until_disconnected(request, run())
    return _result(info, gen, text, last, body.metadata, _logprobs(body, logprobs))


def _logprobs(body: ProcessRequest, tokens: list[ChosenToken]) -> list[TokenLogprob] | None:
    """The tokens' log-probabilities as the native routes give them (None unless asked)."""
    if not body.logprobs:
        return None
    return [TokenLogprob(**t) for t in chat_logprobs(tokens)["content"]]


@router.post("/api/model/stream", response_class=EventStreamResponse, responses={
    **JSON_ERROR_RESPONSES, 200: {"description": STREAM_DOC, "content": sse_content(STREAM_EVENTS)}})
async def stream(body: ProcessRequest, request: Request, backend: Backend = Depends(get_backend)
                 ) -> EventStreamResponse:
    """Like /api/model/process, but streams the answer as it is generated, with timing events (for the web UI).
    Closing the connection cancels the generation and frees its KV cache on every node."""
    info, gen = await _prepare(backend, body)
    await until_disconnected(request, gen.start())

    async def events() -> AsyncIterator[str]:
        stages = [StreamStage(node=s.node, address=s.address, layers=s.layers) for s in _stages(info, [], [])]
        yield sse(StreamStart(id=gen.request_id, model=info.name, promptTokens=len(gen.prompt_ids),
                              maxTokens=gen.max_tokens, nodeCount=info.num_stages, stages=stages).model_dump(), "start")
        parts: list[str] = []
        chosen: list[ChosenToken] = []
        first_sent = False
        try:
            async for chunk in gen.chunks():
                if not first_sent and gen.times.first_token is not None:
                    first_sent = True
                    yield sse(StreamFirstToken(timeToFirstToken=round((gen.times.ttft_s or 0) * 1000, 1),
                                               queueTime=round(chunk.queue_seconds * 1000, 1)).model_dump(),
                              "first_token")
                chosen += chunk.logprobs
                if chunk.text or (body.logprobs and chunk.logprobs):
                    parts.append(chunk.text)
                    yield sse(StreamToken(
                        text=chunk.text, tokens=chunk.completion_tokens,
                        elapsedMs=round((time.perf_counter() - gen.times.started) * 1000, 1),
                        tokensPerSecond=round(gen.times.decode_rate(chunk.completion_tokens), 2),
                        logprobs=_logprobs(body, chunk.logprobs)).model_dump(), "token")
                if chunk.finish_reason:
                    yield sse(_result(info, gen, "".join(parts), chunk, body.metadata,
                                      _logprobs(body, chosen)).model_dump(), "done")
        except ApiError as e:
            logger.warning("request %s failed mid-stream: %s", gen.request_id, e.message)
            yield sse(e.body(), "error")

    return event_stream(events())


@router.post("/api/tokenize", response_model=TokenizeResponse, responses=ERROR_RESPONSES)
async def tokenize(body: TokenizeRequest, backend: Backend = Depends(get_backend)) -> TokenizeResponse:
    """Token ids of `text` under the model's tokenizer (through the tokenizer service; works while the
    pipeline is down)."""
    name = body.model or backend.config.model_name
    ids = await backend.encode(name, body.text, body.add_special_tokens, "text")
    try:
        info = (await backend.models()).get(name)
    except ApiError:
        info = None
    return TokenizeResponse(model=name, tokens=ids, count=len(ids), max_context=info.max_context if info else None)


@router.post("/api/detokenize", response_model=DetokenizeResponse, responses=ERROR_RESPONSES)
async def detokenize(body: DetokenizeRequest, backend: Backend = Depends(get_backend)) -> DetokenizeResponse:
    """Text of token ids under the model's tokenizer (special tokens skipped)."""
    name = body.model or backend.config.model_name
    try:
        text = await backend.decode(name, body.tokens)
    except ApiError as e:
        raise ApiError(e.status, e.message, "tokens" if e.status == 400 else "model") from None
    return DetokenizeResponse(model=name, text=text)
