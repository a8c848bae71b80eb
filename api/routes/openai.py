"""OpenAI-compatible routes: /v1/models, /v1/chat/completions and /v1/completions, streaming or not.

The official ``openai`` client works against them unchanged. A streamed answer only starts once its
first token exists, so errors that come before it (full queue, a dead stage) keep their HTTP status;
an error after that arrives as a ``data: {"error": ...}`` event followed by ``data: [DONE]``.
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from api.backend import Backend
from api.choices import (
    Choice,
    Collected,
    choice_sampling,
    collect_choices,
    log_done,
    start_choices,
    stream_choices,
    usage_of,
)
from api.deps import get_backend, get_started_at
from api.errors import ApiError
from api.generation import FinishReason, Generation
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
from api.openai_schemas import ChatCompletionRequest, CompletionRequest
from api.routes import ERROR_RESPONSES, openai_events, sse_content
from api.streaming import event_stream, sse
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
    request_id, n = f"chatcmpl-{uuid.uuid4().hex[:24]}", body.n or 1
    if tools is not None and n > 1:
        raise ApiError(400, "n > 1 cannot be combined with tools (a turn with tools has one answer)", "n")
    gens = [Generation(backend, info.name, prompt_ids, max_tokens, choice_sampling(body.sampling(), i), body.stops,
                       _choice_id(request_id, i), body.ignore_eos, body.speculative is not False, grammar=grammar)
            for i in range(n)]
    logger.info("request %s: chat model=%s prompt=%d tokens max_tokens=%d n=%d stream=%s", request_id, info.name,
                len(prompt_ids), max_tokens, n, body.stream)
    choices = await start_choices(request, gens)
    if tools is not None:
        return await _tool_answer(request, choices[0], body)
    if body.stream:
        def make(index: int, text: str, logprobs: list[ChosenToken], finish: FinishReason | None,
                 usage: UsageInfo | None) -> dict[str, Any]:
            out = ChatCompletionChunk(id=request_id, model=info.name, choices=[], usage=usage).model_dump()
            delta = {"content": text} if text else {}  # OpenAI leaves out what a delta does not change
            if usage is None:
                out["choices"] = [{"index": index, "delta": delta, "finish_reason": finish,
                                   "logprobs": chat_logprobs(logprobs) if body.logprobs and logprobs else None}]
            return out

        openings: list[dict[str, Any] | None] = []
        for i in range(n):
            opening = make(i, "", [], None, None)
            opening["choices"][0]["delta"] = {"role": "assistant", "content": ""}
            openings.append(opening)
        return stream_choices(choices, body.include_usage, make, openings)
    collected = await collect_choices(request, choices)
    for c in collected:
        log_done(gens[c.index], c.last)
    return ChatCompletionResponse(
        id=request_id, model=info.name, usage=usage_of([c.last for c in collected]),
        choices=[ChatChoice(index=c.index, message=AssistantMessage(content=c.text),
                            finish_reason=c.last.finish_reason or "stop",
                            logprobs=chat_logprobs(c.logprobs) if body.logprobs else None) for c in collected])


def _choice_id(request_id: str, index: int) -> str:
    """The coordinator's request id of choice ``index`` (the first keeps the response's)."""
    return request_id if index == 0 else f"{request_id}-{index}"


async def _tool_answer(request: Request, choice: Choice, body: ChatCompletionRequest
                       ) -> ChatCompletionResponse | StreamingResponse:
    """A turn with tools: the whole JSON answer (api/tools.py), as calls or words; streamed as one delta."""
    [whole] = await collect_choices(request, [choice])
    gen, last = choice.gen, whole.last
    log_done(gen, last)
    content, calls = read_answer(whole.text)
    assert last.finish_reason  # collected up to the last chunk, the one with a finish reason
    finish: Literal["stop", "length", "tool_calls"] = "tool_calls" if calls else last.finish_reason
    choice_out = ChatChoice(message=AssistantMessage(content=content, tool_calls=calls or None), finish_reason=finish,
                            logprobs=chat_logprobs(whole.logprobs) if body.logprobs else None)
    if not body.stream:
        return ChatCompletionResponse(id=gen.request_id, model=gen.model, usage=usage_of([last]), choices=[choice_out])
    head = ChatCompletionChunk(id=gen.request_id, model=gen.model, choices=[]).model_dump()
    delta: dict[str, Any] = {"role": "assistant", "content": content}
    if calls:
        delta["tool_calls"] = [{"index": i, **c.model_dump()} for i, c in enumerate(calls)]

    async def events() -> AsyncIterator[str]:
        yield sse({**head, "choices": [{"index": 0, "delta": delta, "logprobs": choice_out.logprobs,
                                        "finish_reason": None}]})
        yield sse({**head, "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": finish}]})
        if body.include_usage:
            yield sse({**head, "usage": usage_of([last]).model_dump()})
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
    request_id, n = f"cmpl-{uuid.uuid4().hex[:24]}", body.n or 1
    best_of = max(body.best_of or n, n)  # the n with the highest cumulative log-probability of best_of are returned
    if body.stream and best_of > n:
        raise ApiError(400, f"best_of ({best_of}) > n ({n}) cannot be streamed: the best are known at the end",
                       "best_of")
    sampling = body.sampling()
    if best_of > n and sampling.logprobs is None:  # ranking needs every chosen token's log-probability
        sampling = dataclasses.replace(sampling, logprobs=0)
    gens = [Generation(backend, info.name, prompt_ids, max_tokens, choice_sampling(sampling, i), body.stops,
                       _choice_id(request_id, i), body.ignore_eos, body.speculative is not False,
                       prompt_logprobs=i == 0 and body.echo and wants_logprobs) for i in range(best_of)]
    logger.info("request %s: completion model=%s prompt=%d tokens max_tokens=%d n=%d best_of=%d stream=%s",
                request_id, info.name, len(prompt_ids), max_tokens, n, best_of, body.stream)
    echo = ""
    if body.echo:
        echo = prompt_text if prompt_text is not None else await backend.decode(info.name, prompt_ids)
    choices = await start_choices(request, gens)
    prompt_lp = await _prompt_logprobs(backend, gens[0]) if gens[0].prompt_logprobs else None
    if body.stream:
        return _streamed_completion(choices, body, request_id, info.name, echo, prompt_lp)
    collected = await collect_choices(request, choices)
    for c in collected:
        log_done(gens[c.index], c.last)
    usage = usage_of([c.last for c in collected])  # every sequence generated counts, as OpenAI bills best_of
    best = sorted(collected, key=lambda c: -c.cumulative_logprob)[:n] if best_of > n else collected
    return CompletionResponse(id=request_id, model=info.name, usage=usage,
                              choices=[_completion_choice(i, c, echo, wants_logprobs, prompt_lp)
                                       for i, c in enumerate(best)])


def _streamed_completion(choices: list[Choice], body: CompletionRequest, request_id: str, model: str, echo: str,
                         prompt_lp: dict[str, Any] | None) -> StreamingResponse:
    sent = [len(echo)] * len(choices)  # characters of each choice's text so far (log-probabilities' text_offset)
    wants_logprobs = body.logprobs is not None

    def make(index: int, text: str, logprobs: list[ChosenToken], finish: FinishReason | None,
             usage: UsageInfo | None) -> dict[str, Any]:
        lp = completion_logprobs(logprobs, sent[index]) if wants_logprobs and logprobs else None
        sent[index] += len(text)
        parts = [] if usage else [CompletionChoice(index=index, text=text, finish_reason=finish, logprobs=lp)]
        return CompletionChunk(id=request_id, model=model, choices=parts, usage=usage).model_dump(exclude_none=False)

    openings: list[dict[str, Any] | None] = [make(c.index, echo, [], None, None) if echo else None for c in choices]
    for opening in openings:
        if opening is not None and prompt_lp is not None:
            opening["choices"][0]["logprobs"] = prompt_lp
    return stream_choices(choices, body.include_usage, make, openings)


def _completion_choice(index: int, c: Collected, echo: str, wants_logprobs: bool, prompt_lp: dict[str, Any] | None
                       ) -> CompletionChoice:
    """One whole choice of a completion, the echoed prompt (and its log-probabilities) first."""
    lp = completion_logprobs(c.logprobs, len(echo)) if wants_logprobs else None
    if lp is not None and prompt_lp is not None:
        lp = {key: prompt_lp[key] + values for key, values in lp.items()}
    return CompletionChoice(index=index, text=echo + c.text, finish_reason=c.last.finish_reason or "stop",
                            logprobs=lp)


async def _prompt_logprobs(backend: Backend, gen: Generation) -> dict[str, Any]:
    """The prompt's tokens in a completion's ``logprobs`` (echo): the first without a log-probability."""
    if gen.prompt_scores is None:
        raise ApiError(502, "the coordinator did not send the prompt's log-probabilities")
    [(first, _)] = await backend.token_pieces(gen.model, gen.prompt_ids[:1])
    return completion_logprobs(gen.prompt_scores, 0, unscored=first)
