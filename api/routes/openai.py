"""OpenAI-compatible routes: /v1/models, /v1/chat/completions and /v1/completions, streaming or not.

The official ``openai`` client works against them unchanged. A streamed answer only starts once its
first token exists, so errors that come before it (full queue, a dead stage) keep their HTTP status;
an error after that arrives as a ``data: {"error": ...}`` event followed by ``data: [DONE]``.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any, Literal

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from api.backend import Backend
from api.deps import get_backend, get_started_at
from api.errors import ApiError, error_body
from api.generation import FinishReason, Generation, TextChunk
from api.logprobs import ChosenToken, chat_logprobs, completion_logprobs
from api.openai_responses import (
    AssistantMessage,
    ChatChoice,
    ChatCompletionChunk,
    ChatCompletionResponse,
    CompletionChoice,
    CompletionChunk,
    CompletionResponse,
    ModelCard,
    ModelList,
    UsageInfo,
)
from api.openai_schemas import ChatCompletionRequest, CompletionRequest, SamplingRequest
from api.routes import ERROR_RESPONSES, openai_events, sse_content
from api.streaming import event_stream, sse, until_disconnected
from api.structured import json_schema_grammar
from api.tools import plan_tools, read_answer, render_messages

logger = logging.getLogger(__name__)
router = APIRouter(prefix="/v1", tags=["openai"])
COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for the legacy completions route


def _streamed(chunk_model: type) -> dict[int | str, dict[str, Any]]:
    doc = (f"JSON, or with `stream: true` server-sent events: `data: <{chunk_model.__name__} JSON>` messages, "
           "then `data: [DONE]`")
    return {**ERROR_RESPONSES, 200: {"description": doc, "content": sse_content(openai_events(chunk_model))}}


@router.get("/models", response_model=ModelList, responses=ERROR_RESPONSES)
async def list_models(backend: Backend = Depends(get_backend), created: int = Depends(get_started_at)) -> ModelList:
    """The models the coordinator serves."""
    models = await backend.models()
    return ModelList(data=[ModelCard(id=name, created=created, max_model_len=m.max_context, ready=m.ready,
                                     num_stages=m.num_stages) for name, m in models.items()
                           if m.state not in ("pending", "draining")])


@router.get("/models/{model:path}", response_model=ModelCard, responses=ERROR_RESPONSES)
async def get_model(model: str, backend: Backend = Depends(get_backend), created: int = Depends(get_started_at)
                    ) -> ModelCard:
    """One served model."""
    models = await backend.models()
    if model not in models or models[model].state in ("pending", "draining"):
        raise ApiError(404, f"model {model!r} is not served; available: {sorted(models)}", "model")
    m = models[model]
    return ModelCard(id=model, created=created, max_model_len=m.max_context, ready=m.ready,
                     num_stages=m.num_stages)


async def _first(request: Request, gen: Generation, chunks: AsyncGenerator[TextChunk, None]) -> TextChunk:
    """Starts the generation and waits for its first text (or its end); cancelled if the client leaves."""
    async def run() -> TextChunk:
        await gen.start()
        return await anext(chunks)

    try:
        return await until_disconnected(request, run())
    except BaseException:
        gen.cancel()
        raise


MakeChunk = Callable[[str, list[ChosenToken], FinishReason | None, UsageInfo | None], dict[str, Any]]


def _stream(gen: Generation, first: TextChunk, chunks: AsyncGenerator[TextChunk, None], body: SamplingRequest,
            make: MakeChunk, opening: dict[str, Any] | None = None) -> StreamingResponse:
    """SSE of OpenAI chunks; ``make(text, logprobs, finish_reason, usage)`` builds one chunk's JSON."""
    async def events() -> AsyncIterator[str]:
        try:
            if opening is not None:
                yield sse(opening)
            chunk = first
            while True:
                if chunk.text or chunk.logprobs:
                    yield sse(make(chunk.text, chunk.logprobs, None, None))
                if chunk.finish_reason:
                    yield sse(make("", [], chunk.finish_reason, None))
                    if body.include_usage:
                        yield sse(make("", [], None, _usage(chunk)))
                    _log_done(gen, chunk)
                    break
                chunk = await anext(chunks)
        except ApiError as e:
            logger.warning("request %s failed mid-stream: %s", gen.request_id, e.message)
            yield sse(error_body(e.status, e.message, e.param))
        finally:
            await chunks.aclose()  # cancels the generation when the client went away
        yield "data: [DONE]\n\n"

    return event_stream(events())


def _usage(last: TextChunk) -> UsageInfo:
    return UsageInfo.of(last.prompt_tokens, last.completion_tokens, last.draft_proposed, last.draft_accepted,
                        last.cached_tokens)


def _log_done(gen: Generation, last: TextChunk) -> None:
    times = gen.times
    end = times.finished or times.started
    logger.info("request %s done: model=%s prompt=%d completion=%d finish=%s ttft=%s ms total=%.0f ms",
                gen.request_id, gen.model, last.prompt_tokens, last.completion_tokens, last.finish_reason,
                "-" if times.ttft_s is None else f"{times.ttft_s * 1000:.0f}", (end - times.started) * 1000)


async def _collect(first: TextChunk, chunks: AsyncGenerator[TextChunk, None], request: Request
                   ) -> tuple[str, list[ChosenToken], TextChunk]:
    """The whole text, the log-probabilities of its tokens (when asked) and the last chunk."""
    async def rest() -> tuple[str, list[ChosenToken], TextChunk]:
        parts, logprobs, last = [first.text], list(first.logprobs), first
        while not last.finish_reason:
            last = await anext(chunks)
            parts.append(last.text)
            logprobs += last.logprobs
        return "".join(parts), logprobs, last

    try:
        return await until_disconnected(request, rest())
    finally:
        await chunks.aclose()


@router.post("/chat/completions", response_model=ChatCompletionResponse, responses=_streamed(ChatCompletionChunk))
async def chat_completions(body: ChatCompletionRequest, request: Request, backend: Backend = Depends(get_backend)
                           ) -> ChatCompletionResponse | StreamingResponse:
    """Chat completion: the messages go through the model's chat template."""
    info = await backend.model(body.model)
    await backend.check_queue(info)
    tools = plan_tools(body.tools, body.tool_choice, body.parallel_tool_calls is True)
    schema = body.response_format.output_schema if body.response_format else None
    if tools is not None and schema is not None:
        raise ApiError(400, "response_format cannot be combined with tools (their answer has its own format)",
                       "response_format")
    grammar = (await json_schema_grammar(tools.schema, "tools") if tools else
               "" if schema is None else await json_schema_grammar(schema))
    prompt_ids = await backend.encode_chat(info.name, render_messages([m.as_dict() for m in body.messages], tools))
    max_tokens = backend.fit(info, len(prompt_ids), body.token_limit, prompt_param="messages",
                             max_param=body.limit_field)
    gen = Generation(backend, info.name, prompt_ids, max_tokens, body.sampling(), body.stops,
                     f"chatcmpl-{uuid.uuid4().hex[:24]}", body.ignore_eos, body.speculative is not False,
                     grammar=grammar)
    logger.info("request %s: chat model=%s prompt=%d tokens max_tokens=%d stream=%s", gen.request_id, info.name,
                len(prompt_ids), max_tokens, body.stream)
    chunks = gen.chunks()
    first = await _first(request, gen, chunks)
    if tools is not None:
        return await _tool_answer(request, gen, first, chunks, body)
    if body.stream:
        def make(text: str, logprobs: list[ChosenToken], finish: FinishReason | None, usage: UsageInfo | None
                 ) -> dict[str, Any]:
            out = ChatCompletionChunk(id=gen.request_id, model=info.name, choices=[], usage=usage).model_dump()
            delta = {"content": text} if text else {}  # OpenAI leaves out what a delta does not change
            if usage is None:
                out["choices"] = [{"index": 0, "delta": delta, "finish_reason": finish,
                                   "logprobs": chat_logprobs(logprobs) if body.logprobs and logprobs else None}]
            return out

        opening = make("", [], None, None)
        opening["choices"][0]["delta"] = {"role": "assistant", "content": ""}
        return _stream(gen, first, chunks, body, make, opening)
    text, logprobs, last = await _collect(first, chunks, request)
    assert last.finish_reason  # _collect reads up to the last chunk, the one with a finish reason
    _log_done(gen, last)
    return ChatCompletionResponse(
        id=gen.request_id, model=info.name, usage=_usage(last),
        choices=[ChatChoice(message=AssistantMessage(content=text), finish_reason=last.finish_reason,
                            logprobs=chat_logprobs(logprobs) if body.logprobs else None)])


async def _tool_answer(request: Request, gen: Generation, first: TextChunk, chunks: AsyncGenerator[TextChunk, None],
                       body: ChatCompletionRequest) -> ChatCompletionResponse | StreamingResponse:
    """A turn with tools: the whole JSON answer (api/tools.py), as calls or words; streamed as one delta."""
    text, logprobs, last = await _collect(first, chunks, request)
    _log_done(gen, last)
    content, calls = read_answer(text)
    assert last.finish_reason  # _collect reads up to the last chunk, the one with a finish reason
    finish: Literal["stop", "length", "tool_calls"] = "tool_calls" if calls else last.finish_reason
    choice = ChatChoice(message=AssistantMessage(content=content, tool_calls=calls or None), finish_reason=finish,
                        logprobs=chat_logprobs(logprobs) if body.logprobs else None)
    if not body.stream:
        return ChatCompletionResponse(id=gen.request_id, model=gen.model, usage=_usage(last), choices=[choice])
    head = ChatCompletionChunk(id=gen.request_id, model=gen.model, choices=[]).model_dump()
    delta: dict[str, Any] = {"role": "assistant", "content": content}
    if calls:
        delta["tool_calls"] = [{"index": i, **c.model_dump()} for i, c in enumerate(calls)]

    async def events() -> AsyncIterator[str]:
        yield sse({**head, "choices": [{"index": 0, "delta": delta, "logprobs": choice.logprobs,
                                        "finish_reason": None}]})
        yield sse({**head, "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": finish}]})
        if body.include_usage:
            yield sse({**head, "usage": _usage(last).model_dump()})
        yield "data: [DONE]\n\n"

    return event_stream(events())


@router.post("/completions", response_model=CompletionResponse, responses=_streamed(CompletionChunk))
async def completions(body: CompletionRequest, request: Request, backend: Backend = Depends(get_backend)
                      ) -> CompletionResponse | StreamingResponse:
    """Text completion of `prompt` (text or token ids), without a chat template."""
    info = await backend.model(body.model)
    await backend.check_queue(info)
    prompt_text = body.prompt_text
    prompt_ids = body.prompt_token_ids if prompt_text is None else await backend.encode(info.name, prompt_text)
    max_tokens = backend.fit(info, len(prompt_ids), body.max_tokens, COMPLETIONS_DEFAULT_MAX_TOKENS)
    wants_logprobs = body.logprobs is not None
    gen = Generation(backend, info.name, prompt_ids, max_tokens, body.sampling(), body.stops,
                     f"cmpl-{uuid.uuid4().hex[:24]}", body.ignore_eos, body.speculative is not False,
                     prompt_logprobs=body.echo and wants_logprobs)
    logger.info("request %s: completion model=%s prompt=%d tokens max_tokens=%d stream=%s", gen.request_id,
                info.name, len(prompt_ids), max_tokens, body.stream)
    echo = ""
    if body.echo:
        echo = prompt_text if prompt_text is not None else await backend.decode(info.name, prompt_ids)
    chunks = gen.chunks()
    first = await _first(request, gen, chunks)
    if body.stream:
        sent = len(echo)  # characters of the choice's text so far (log-probabilities' text_offset)

        def make(text: str, logprobs: list[ChosenToken], finish: FinishReason | None, usage: UsageInfo | None
                 ) -> dict[str, Any]:
            nonlocal sent
            lp = completion_logprobs(logprobs, sent) if wants_logprobs and logprobs else None
            sent += len(text)
            choices = [] if usage else [CompletionChoice(text=text, finish_reason=finish, logprobs=lp)]
            return CompletionChunk(id=gen.request_id, model=info.name, choices=choices,
                                   usage=usage).model_dump(exclude_none=False)

        opening = make(echo, [], None, None) if echo else None
        if opening is not None and gen.prompt_logprobs:
            opening["choices"][0]["logprobs"] = await _prompt_logprobs(backend, gen)
        return _stream(gen, first, chunks, body, make, opening)
    text, logprobs, last = await _collect(first, chunks, request)
    assert last.finish_reason  # _collect reads up to the last chunk, the one with a finish reason
    _log_done(gen, last)
    lp = completion_logprobs(logprobs, len(echo)) if wants_logprobs else None
    if lp is not None and gen.prompt_logprobs:
        prompt_lp = await _prompt_logprobs(backend, gen)
        lp = {key: prompt_lp[key] + values for key, values in lp.items()}
    return CompletionResponse(
        id=gen.request_id, model=info.name, usage=_usage(last),
        choices=[CompletionChoice(text=echo + text, finish_reason=last.finish_reason, logprobs=lp)])


async def _prompt_logprobs(backend: Backend, gen: Generation) -> dict[str, Any]:
    """The prompt's tokens in a completion's ``logprobs`` (echo): the first without a log-probability."""
    if gen.prompt_scores is None:
        raise ApiError(502, "the coordinator did not send the prompt's log-probabilities")
    [(first, _)] = await backend.token_pieces(gen.model, gen.prompt_ids[:1])
    return completion_logprobs(gen.prompt_scores, 0, unscored=first)
