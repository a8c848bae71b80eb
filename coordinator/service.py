"""Coordinator gRPC servicer: Generate (server-streaming token ids) and ListModels."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator

import grpc

from coordinator.engine import ModelEngine
from coordinator.request import Request
from coordinator.scheduler import NeverFits, QueueFull
from protos import coordinator_pb2, coordinator_pb2_grpc, shard_pb2, wire

logger = logging.getLogger(__name__)


class CoordinatorServicer(coordinator_pb2_grpc.CoordinatorServicer):
    def __init__(self, engines: dict[str, ModelEngine]) -> None:
        self.engines = engines

    async def _engine_for(self, name: str, context: grpc.aio.ServicerContext) -> ModelEngine:
        engine = self.engines.get(name)
        if engine is None:
            await context.abort(grpc.StatusCode.NOT_FOUND,
                                f"model {name!r} is not served here; available: {sorted(self.engines)}")
        if not engine.ready:
            why = engine.load_error or "it is still loading"
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"model {name!r} is not ready: {why}")
        return engine

    async def Generate(self, request: coordinator_pb2.GenerateRequest, context: grpc.aio.ServicerContext
                       ) -> AsyncIterator[coordinator_pb2.GenerateResponse]:
        """Streams generated token ids; the last message carries the finish reason."""
        engine = await self._engine_for(request.model, context)
        meta = engine.meta
        prompt = list(request.prompt_token_ids)
        problem = ""
        if not prompt:
            problem = "prompt_token_ids is empty"
        elif min(prompt) < 0 or max(prompt) >= meta.vocab_size:
            problem = f"prompt token ids must be in [0, {meta.vocab_size})"
        elif request.max_tokens < 1:
            problem = f"max_tokens must be >= 1, got {request.max_tokens}"
        elif len(prompt) + request.max_tokens > meta.max_context:
            problem = (f"prompt ({len(prompt)} tokens) + max_tokens ({request.max_tokens}) = "
                       f"{len(prompt) + request.max_tokens} exceeds the context of {request.model} "
                       f"({meta.max_context} tokens)")
        try:
            sampling = wire.sampling_from_proto(request.sampling)
        except ValueError as e:
            problem = problem or str(e)
        if problem:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        request_id = request.request_id or uuid.uuid4().hex[:12]
        req = Request(
            request_id=request_id, seq_id=f"{request_id}-{uuid.uuid4().hex[:8]}", prompt_ids=prompt,
            max_tokens=request.max_tokens, sampling=sampling, stop_token_ids=frozenset(request.stop_token_ids),
            eos_token_ids=frozenset() if request.ignore_eos else frozenset(meta.eos_token_ids),
        )
        try:
            engine.submit(req)
        except NeverFits as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        except QueueFull as e:
            logger.warning("request %s refused: %s", request_id, e)
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"model {request.model!r} is busy: {e}")
        logger.info("request %s: %s, %d prompt tokens, max_tokens %d", request_id, request.model, len(prompt),
                    request.max_tokens)
        completion = 0
        try:
            yield coordinator_pb2.GenerateResponse(prompt_tokens=len(prompt))  # accepted
            while True:
                event = await req.events.get()
                completion += len(event.token_ids)
                yield coordinator_pb2.GenerateResponse(
                    token_ids=event.token_ids, finish_reason=event.finish_reason, error=event.error,
                    prompt_tokens=len(prompt), completion_tokens=completion, queue_seconds=req.queue_seconds,
                    stage_seconds=req.stage_seconds)
                if event.finish_reason:
                    logger.info("request %s finished (%s) after %d tokens; %.3f s in the queue", request_id,
                                event.finish_reason, completion, req.queue_seconds)
                    return
        except asyncio.CancelledError:
            engine.cancel(req)  # the client went away: stop within one step, free KV on every node
            raise
        finally:
            if not req.is_finished:
                engine.cancel(req)

    async def ListModels(self, request: coordinator_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
                         ) -> coordinator_pb2.ListModelsResponse:
        """Models with their stages, states and KV use (asks each node, 2 s deadline)."""
        reply = coordinator_pb2.ListModelsResponse()
        for name, engine in self.engines.items():
            infos = await asyncio.gather(*(s.client.info() for s in engine.pipeline.stages), return_exceptions=True)
            model = reply.models.add(name=name, num_layers=engine.meta.num_layers, max_context=engine.meta.max_context,
                                     ready=engine.ready, eos_token_ids=engine.meta.eos_token_ids,
                                     pipeline_depth=engine.depth)
            for stage, info in zip(engine.pipeline.stages, infos):
                used = 0
                state = stage.state
                if isinstance(info, shard_pb2.NodeInfo):
                    used = next((s.kv_used_tokens for s in info.shards if s.model == name), 0)
                elif stage.state == "ready":
                    state = "down"
                model.stages.add(node_id=stage.client.node.id, address=stage.client.node.address,
                                 layers=wire.layer_range_to_proto(stage.layers), state=state, kv_used_tokens=used,
                                 kv_capacity_tokens=stage.kv_capacity_tokens)
        return reply
