"""Coordinator gRPC servicer: Generate (server-streaming token ids), ListModels and Cluster."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator

import grpc

from coordinator.engine import ModelEngine
from coordinator.membership import Membership
from coordinator.request import Request
from coordinator.scheduler import NeverFits, QueueFull
from protos import coordinator_pb2, coordinator_pb2_grpc, wire

logger = logging.getLogger(__name__)


class CoordinatorServicer(coordinator_pb2_grpc.CoordinatorServicer):
    def __init__(self, engines: dict[str, ModelEngine], membership: Membership) -> None:
        self.engines = engines
        self.membership = membership
        self.stopping = False  # SIGTERM: in-flight requests finish, new ones are refused

    async def _engine_for(self, name: str, context: grpc.aio.ServicerContext) -> ModelEngine:
        if self.stopping:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the coordinator is shutting down")
        engine = self.engines.get(name)
        if engine is None:
            await context.abort(grpc.StatusCode.NOT_FOUND,
                                f"model {name!r} is not served here; available: {sorted(self.engines)}")
        if not engine.ready:
            await context.abort(grpc.StatusCode.UNAVAILABLE,
                                f"model {name!r} is unavailable: {engine.unavailable_reason()}")
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
                    stage_seconds=req.stage_seconds, route=req.route_nodes, failovers=req.failovers)
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

    def _kv_used(self, node_id: str, model: str) -> int:
        info = self.membership.status[node_id].info if node_id in self.membership.status else None
        if info is None:
            return 0
        return next((s.kv_used_tokens for s in info.shards if s.model == model), 0)

    def model_info(self, name: str, engine: ModelEngine) -> coordinator_pb2.ModelInfo:
        state = "serving" if engine.ready else ("loading" if not engine.loaded else "unavailable")
        stats = engine.stats
        model = coordinator_pb2.ModelInfo(
            name=name, num_layers=engine.meta.num_layers, max_context=engine.meta.max_context, ready=engine.ready,
            eos_token_ids=engine.meta.eos_token_ids, pipeline_depth=engine.depth,
            num_stages=len(engine.pipeline.groups), failovers=stats.failovers, recoveries=stats.recoveries,
            last_recovery_seconds=stats.last_recovery_seconds, state=state,
            unavailable_reason="" if engine.ready else engine.unavailable_reason(),
            running=len(engine.scheduler.running), waiting=len(engine.scheduler.waiting))
        for i, group in enumerate(engine.pipeline.groups):
            for r in group.replicas:
                model.stages.add(node_id=r.node_id, address=r.client.node.address,
                                 layers=wire.layer_range_to_proto(r.layers), state=r.state,
                                 kv_used_tokens=self._kv_used(r.node_id, name), kv_capacity_tokens=r.kv_capacity_tokens,
                                 last_error=r.last_error, stage=i, weight_bytes=r.weight_bytes)
        return model

    async def ListModels(self, request: coordinator_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
                         ) -> coordinator_pb2.ListModelsResponse:
        """Models with every replica of each layer range, their states and KV use (as of the last health poll)."""
        return coordinator_pb2.ListModelsResponse(models=[self.model_info(n, e) for n, e in self.engines.items()])

    async def Cluster(self, request: coordinator_pb2.ClusterRequest, context: grpc.aio.ServicerContext
                      ) -> coordinator_pb2.ClusterInfo:
        """Every node (state, last error, memory, KV use, recent events) and every model."""
        reply = coordinator_pb2.ClusterInfo(models=[self.model_info(n, e) for n, e in self.engines.items()])
        for node_id, st in self.membership.status.items():
            info = st.info
            reply.nodes.add(
                node_id=node_id, address=st.node.address, state=self.membership.state(node_id),
                last_error=st.last_error, last_seen_unix=st.last_seen or 0.0, rss_bytes=info.rss_bytes if info else 0,
                events=st.events, kv_used_tokens=sum(s.kv_used_tokens for s in info.shards) if info else 0,
                kv_capacity_tokens=sum(s.kv_capacity_tokens for s in info.shards) if info else 0)
        return reply
