"""create_app(config): the FastAPI edge in front of the tokenizer service and the coordinator."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import grpc
from fastapi import FastAPI

from api.clients import CoordinatorClient, TokenizerClient
from api.errors import ApiError, from_grpc, install_handlers
from api.generation import stream_text
from api.schemas import ErrorResponse, ProcessRequest, ProcessResponse, Usage
from protos.config import Config
from protos.data_structures import SamplingParams

logger = logging.getLogger(__name__)
ERRORS = {code: {"model": ErrorResponse} for code in (400, 404, 422, 429, 503, 504)}


def create_app(config: Config) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.tokenizer = TokenizerClient(config.tokenizer.address)
        app.state.coordinator = CoordinatorClient(config.coordinator.address, config.api.request_timeout_s)
        yield
        await app.state.tokenizer.close()
        await app.state.coordinator.close()

    app = FastAPI(title="Shardline API", version="0.1.0", lifespan=lifespan,
                  description="Pipeline-parallel LLM serving: one model's layers split across shard nodes.")
    install_handlers(app)

    @app.get("/health", tags=["health"])
    async def health() -> dict[str, str]:
        """The API process is up (says nothing about the pipeline behind it)."""
        return {"status": "ok"}

    @app.post("/api/model/process", response_model=ProcessResponse, responses=ERRORS, tags=["generate"])
    async def process(body: ProcessRequest) -> ProcessResponse:
        """Generates a completion for `text` through the whole pipeline and returns it at once."""
        started = time.perf_counter()
        request_id = uuid.uuid4().hex[:12]
        tokenizer: TokenizerClient = app.state.tokenizer
        coordinator: CoordinatorClient = app.state.coordinator
        name = body.model or config.model_name
        try:
            models = await coordinator.models()
        except grpc.aio.AioRpcError as e:
            raise from_grpc(e, "the coordinator") from None
        if name not in models:
            raise ApiError(404, f"model {name!r} is not served; available: {sorted(models)}", "model")
        info = models[name]
        try:
            tinfo = await tokenizer.info(name)
            chat = tinfo.has_chat_template if body.chat is None else body.chat
            if chat:
                prompt_ids = await tokenizer.chat(name, [{"role": "user", "content": body.text}])
            else:
                prompt_ids = await tokenizer.encode(name, body.text)
        except grpc.aio.AioRpcError as e:
            raise from_grpc(e, "the tokenizer service") from None
        max_tokens = body.max_tokens or min(config.api.default_max_tokens, info.max_context - len(prompt_ids))
        if len(prompt_ids) >= info.max_context:
            raise ApiError(400, f"prompt is {len(prompt_ids)} tokens but the context of {name} is {info.max_context} "
                           f"tokens (at most {info.max_context - 1} prompt tokens, so one can be generated)", "text")
        sampling = SamplingParams(body.temperature, body.top_p, body.top_k, body.seed, body.repetition_penalty)
        logger.info("request %s: /api/model/process model=%s prompt=%d tokens max_tokens=%d", request_id, name,
                    len(prompt_ids), max_tokens)
        parts: list[str] = []
        last = None
        async for chunk in stream_text(tokenizer, coordinator, name, prompt_ids, max_tokens, sampling,
                                       body.stop, request_id, body.ignore_eos):
            parts.append(chunk.text)
            last = chunk
        assert last is not None
        elapsed_ms = (time.perf_counter() - started) * 1000
        logger.info("request %s done: %d tokens, %s, %.0f ms", request_id, last.completion_tokens,
                    last.finish_reason, elapsed_ms)
        return ProcessResponse(text="".join(parts), processingTime=round(elapsed_ms, 1),
                               queueTime=round(last.queue_seconds * 1000, 1), nodeCount=len(info.stages),
                               model=name, usage=Usage(prompt_tokens=len(prompt_ids),
                                                       completion_tokens=last.completion_tokens),
                               finish_reason=last.finish_reason, metadata=body.metadata)

    return app
