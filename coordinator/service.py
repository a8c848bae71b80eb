"""Coordinator gRPC servicer: Generate (server-streaming token ids), ListModels, Cluster, and the admin calls
(coordinator/admin_rpcs.py)."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator

import grpc

from coordinator import metrics
from coordinator.admin_rpcs import AdminRpcs
from coordinator.engine import ModelEngine
from coordinator.model_meta import ModelMeta
from coordinator.registry import ModelRegistry
from coordinator.request import Request
from coordinator.scheduler import NeverFits, QueueFull
from coordinator.traffic import TrafficHistory, history_to_proto
from protos import coordinator_pb2, coordinator_pb2_grpc, shard_pb2, wire

logger = logging.getLogger(__name__)


class CoordinatorServicer(AdminRpcs, coordinator_pb2_grpc.CoordinatorServicer):
    def __init__(self, registry: ModelRegistry, traffic: TrafficHistory | None = None) -> None:
        self.registry = registry
        self.traffic = traffic if traffic is not None else metrics.TRAFFIC  # where each model's time went lately
        self.engines = registry.engines
        self.membership = registry.membership
        self.stopping = False  # SIGTERM: in-flight requests finish, new ones are refused

    async def _engine_for(self, name: str, context: grpc.aio.ServicerContext) -> ModelEngine:
        if self.stopping:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the coordinator is shutting down")
        engine = self.engines.get(name)
        if name in self.registry.pending:
            await context.abort(grpc.StatusCode.UNAVAILABLE,
                                f"model {name!r} is pending: {self.registry.pending[name].reason}")
        if engine is None or engine.draining:
            serving = sorted(n for n, e in self.engines.items() if not e.draining)
            why = "is being removed" if engine else "is not served here"
            await context.abort(grpc.StatusCode.NOT_FOUND, f"model {name!r} {why}; available: {serving}")
            raise AssertionError("abort raises")  # pragma: no cover
        if not engine.ready:
            await context.abort(grpc.StatusCode.UNAVAILABLE,
                                f"model {name!r} is unavailable: {engine.unavailable_reason()}")
        return engine

    async def Generate(self, request: coordinator_pb2.GenerateRequest, context: grpc.aio.ServicerContext
                       ) -> AsyncIterator[coordinator_pb2.GenerateResponse]:
        """Streams generated token ids; the last message carries the finish reason."""
        limit = self.registry.config.limits.max_prompt_tokens
        if len(request.prompt_token_ids) > limit:  # counted on the protobuf container, before it becomes a list
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"prompt_token_ids holds "
                                f"{len(request.prompt_token_ids)} ids; at most {limit} (limits.max_prompt_tokens)")
        engine = await self._engine_for(request.model, context)
        req = await self._new_request(request, engine.meta, context)
        try:
            engine.submit(req)
        except NeverFits as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        except QueueFull as e:
            logger.warning("request %s refused: %s", req.request_id, e)
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"model {request.model!r} is busy: {e}")
        logger.info("request %s: %s, %d prompt tokens, max_tokens %d", req.request_id, request.model,
                    req.num_prompt_tokens, request.max_tokens)
        try:
            async for reply in self._replies(request.model, req):
                yield reply
        except asyncio.CancelledError:
            engine.cancel(req)  # the client went away: stop within one step, free KV on every node
            raise
        finally:
            if not req.is_finished:
                engine.cancel(req)

    @staticmethod
    async def _new_request(request: coordinator_pb2.GenerateRequest, meta: ModelMeta,
                           context: grpc.aio.ServicerContext) -> Request:
        """The request to queue, or INVALID_ARGUMENT naming what is wrong with it."""
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
        else:
            if sampling.logit_bias and sampling.logit_bias[-1][0] >= meta.vocab_size:
                problem = problem or (f"logit_bias names token {sampling.logit_bias[-1][0]}; token ids must be in "
                                      f"[0, {meta.vocab_size})")
        if problem:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        request_id = request.request_id or uuid.uuid4().hex[:12]
        return Request(
            request_id=request_id, seq_id=f"{request_id}-{uuid.uuid4().hex[:8]}", prompt_ids=prompt,
            max_tokens=request.max_tokens, sampling=sampling, stop_token_ids=frozenset(request.stop_token_ids),
            eos_token_ids=frozenset() if request.ignore_eos else frozenset(meta.eos_token_ids),
            speculative=not request.no_speculation, prompt_logprobs=request.prompt_logprobs, grammar=request.grammar,
        )

    async def _replies(self, model: str, req: Request) -> AsyncIterator[coordinator_pb2.GenerateResponse]:
        """The "accepted" message, then one per token event; the last carries the finish reason."""
        prompt_tokens, completion = req.num_prompt_tokens, 0
        yield coordinator_pb2.GenerateResponse(prompt_tokens=prompt_tokens)  # accepted
        while True:
            event = await req.events.get()
            completion += len(event.token_ids)
            if event.finish_reason:  # logged and counted first: the client may close on the last message
                logger.info("request %s finished (%s) after %d tokens; %.3f s in the queue", req.request_id,
                            event.finish_reason, completion, req.queue_seconds)
                self._observe_finish(model, req)
            yield coordinator_pb2.GenerateResponse(
                token_ids=event.token_ids, finish_reason=event.finish_reason, error=event.error,
                prompt_tokens=prompt_tokens, completion_tokens=completion, queue_seconds=req.queue_seconds,
                stage_seconds=req.stage_seconds, route=req.route_nodes, failovers=req.failovers,
                cached_tokens=req.cached_tokens,
                draft_proposed=req.drafting.proposed if req.drafting else 0,
                draft_accepted=req.drafting.accepted if req.drafting else 0,
                logprobs=None if event.logprobs is None else wire.logprobs_to_proto(event.logprobs),
                prompt_logprobs=None if event.prompt_logprobs is None else wire.logprobs_to_proto(
                    event.prompt_logprobs))
            if event.finish_reason:
                return

    @staticmethod
    def _observe_finish(model: str, req: Request) -> None:
        if req.finish_reason == "error":
            metrics.FAILURES.labels(model).inc()
            return
        metrics.SUCCESS.labels(model, req.finish_reason).inc()
        metrics.E2E.labels(model).observe((req.finished_time or time.monotonic()) - req.arrival_time)

    def _shard_info(self, node_id: str, model: str) -> shard_pb2.ShardInfo:
        """The node's last reported Info of its shard of model (empty before the first poll)."""
        info = self.membership.status[node_id].info if node_id in self.membership.status else None
        if info is None:
            return shard_pb2.ShardInfo()
        return next((s for s in info.shards if s.model == model), shard_pb2.ShardInfo())

    def model_info(self, name: str, engine: ModelEngine) -> coordinator_pb2.ModelInfo:
        state = self.registry.state(name)
        stats = engine.stats
        model = coordinator_pb2.ModelInfo(
            name=name, num_layers=engine.meta.num_layers, max_context=engine.meta.max_context, ready=engine.ready,
            eos_token_ids=engine.meta.eos_token_ids, pipeline_depth=engine.depth,
            num_stages=len(engine.pipeline.groups), failovers=stats.failovers, recoveries=stats.recoveries,
            last_recovery_seconds=stats.last_recovery_seconds, state=state,
            unavailable_reason="" if engine.ready else engine.unavailable_reason(),
            running=len(engine.scheduler.running), waiting=len(engine.scheduler.waiting), source=engine.meta.path.name,
            max_waiting=engine.scheduler.max_waiting)
        if engine.replicas.model_load is not None:
            model.dtype, model.quantization = engine.replicas.model_load.dtype, engine.replicas.model_load.quantization
        model.forwarding, model.wire_dtype = engine.pipeline.forwarding, engine.pipeline.wire_dtype
        model.speculative = engine.speculation.method
        model.num_speculative_tokens = engine.speculation.max_draft_tokens
        model.draft_model = engine.speculation.draft_model
        for i, group in enumerate(engine.pipeline.groups):
            for r in group.replicas:
                shard = self._shard_info(r.node_id, engine.pipeline.model)
                model.stages.add(node_id=r.node_id, address=r.client.node.address,
                                 layers=wire.layer_range_to_proto(r.layers), state=r.state,
                                 kv_used_tokens=shard.kv_used_tokens, kv_capacity_tokens=r.kv_capacity_tokens,
                                 last_error=r.last_error, stage=i, weight_bytes=r.weight_bytes,
                                 micro_batches=r.micro_batches, kv_blocks_used=shard.kv_blocks_used,
                                 kv_blocks_total=shard.kv_blocks_total, kv_block_size=shard.kv_block_size)
        return model

    async def ListModels(self, request: coordinator_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
                         ) -> coordinator_pb2.ListModelsResponse:
        """Models with every replica of each layer range, their states and KV use (as of the last health poll)."""
        return coordinator_pb2.ListModelsResponse(models=self.all_models())

    def all_models(self) -> list[coordinator_pb2.ModelInfo]:
        out = [self.model_info(n, e) for n, e in self.engines.items()]
        for name, p in self.registry.pending.items():
            out.append(coordinator_pb2.ModelInfo(name=name, state="pending", unavailable_reason=p.reason,
                                                 source=p.request.model.source, dtype=p.request.model.dtype,
                                                 quantization=p.request.model.quantization,
                                                 forwarding=p.request.model.forwarding,
                                                 wire_dtype=p.request.model.wire_dtype,
                                                 speculative=p.request.model.speculative,
                                                 num_speculative_tokens=p.request.model.num_speculative_tokens,
                                                 draft_model=p.request.model.draft_model,
                                                 pending_since_unix=p.since))
        return out

    async def Cluster(self, request: coordinator_pb2.ClusterRequest, context: grpc.aio.ServicerContext
                      ) -> coordinator_pb2.ClusterInfo:
        """Every node (state, last error, memory, KV use, recent events), every model and its recent traffic."""
        reply = coordinator_pb2.ClusterInfo(models=self.all_models())
        for name in list(self.engines):
            if (history := self.traffic.history(name)) is not None:
                reply.traffic.append(history_to_proto(name, history))
        for node_id, st in self.membership.status.items():
            info = st.info
            reply.nodes.add(
                node_id=node_id, address=st.node.address, state=self.membership.state(node_id),
                last_error=st.last_error, last_seen_unix=st.last_seen or 0.0, rss_bytes=info.rss_bytes if info else 0,
                events=st.events, kv_used_tokens=sum(s.kv_used_tokens for s in info.shards) if info else 0,
                kv_capacity_tokens=sum(s.kv_capacity_tokens for s in info.shards) if info else 0,
                memory_budget_bytes=info.memory_budget_bytes if info else 0,
                memory_used_bytes=info.memory_used_bytes if info else 0,
                rtt_ms=self.registry.clients[node_id].link_round_trip_s * 1e3,
                profiles=self.registry.profiles.of_node(node_id, self.registry.clients[node_id].link_round_trip_s),
                links=self.registry.profiles.links_of(node_id))
        return reply

    def snapshot(self) -> metrics.ClusterSnapshot:
        """What the state gauges report at a scrape (from the metrics thread: dicts are copied first, atomically)."""
        models = []
        for name, e in list(self.engines.items()):
            prefix = e.scheduler.prefix
            replicas = [metrics.ReplicaSnapshot(r.node_id, r.state, self._shard_info(r.node_id, name).kv_used_tokens,
                                                r.kv_capacity_tokens, prefix.blocks_on(r.node_id) if prefix else 0)
                        for r in e.pipeline.replicas]
            models.append(metrics.ModelSnapshot(name, len(e.scheduler.running), len(e.scheduler.waiting),
                                                e.num_in_flight, e.depth, replicas,
                                                prefix.hit_rate if prefix else 0.0))
        nodes = [metrics.NodeSnapshot(n, self.membership.state(n)) for n in list(self.membership.status)]
        return metrics.ClusterSnapshot(models, nodes)
