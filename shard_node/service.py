"""ShardNode gRPC servicer: decodes with protos.wire, validates, runs the runner off the event loop."""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import torch

from protos import shard_pb2, shard_pb2_grpc, tensors, wire
from shard_node import metrics
from shard_node.architectures import UnsupportedArchitecture
from shard_node.batch_decode import prefix_cache_updates
from shard_node.cores import CoreShare
from shard_node.forward_session import ForwardSession, NodeContext
from shard_node.handoff import PeerLinks
from shard_node.host import cpu_count, host_id, release_memory, rss_bytes
from shard_node.link_probe import BadRequest, check_request, measure_links
from shard_node.load_plan import LoadPlan, LoadRefused, plan_load
from shard_node.micro_batch import BatchError, BatchResult, MicroBatch
from shard_node.profile import LayerProfile, profile_layers
from shard_node.quantize import kernel_description
from shard_node.runner import DEFAULT_MAX_SEQUENCES, ShardRunner
from shard_node.weights import CheckpointError

logger = logging.getLogger(__name__)


class ShardNodeServicer(shard_pb2_grpc.ShardNodeServicer):
    """Holds one ShardRunner per model; every model computation runs on one worker thread."""

    def __init__(self, node_id: str, default_kv_tokens: int, memory_budget_bytes: int = 0,
                 cores: CoreShare | None = None, handoff_timeout_s: float = 60.0) -> None:
        self.node_id = node_id
        self.cores = cores or CoreShare(cpu_count(), fixed_threads=torch.get_num_threads())  # threads per batch
        self.default_kv_tokens = default_kv_tokens
        self.memory_budget_bytes = memory_budget_bytes  # weights + KV budgets it may hold; 0 = no limit
        self.runners: dict[str, ShardRunner] = {}
        self._reserved: dict[int, tuple[str, int]] = {}  # loads under way: id -> (model, bytes), within the budget
        self._reserve_ids = itertools.count(1)
        self._budget_lock = asyncio.Lock()  # a check of the budget and its reservation are one step
        self.compute = ThreadPoolExecutor(max_workers=1, thread_name_prefix="compute")
        self._stream_ids = itertools.count(1)
        self.context = NodeContext(node_id, self.runners, self._submit, peers=PeerLinks(handoff_timeout_s))

    async def reclaim_idle_caches(self, ttl_s: float, every_s: float = 0.0) -> None:
        """Every ``every_s`` (default ttl_s / 10, at least 1 s) frees the KV caches no micro-batch touched for
        ``ttl_s`` seconds: a Release that failed, or a coordinator that lost track of a sequence while its Forward
        stream stays open (a closed stream frees its caches at once). Runs on the compute thread, between
        micro-batches, so a batch in progress always sees its caches."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(every_s or max(1.0, ttl_s / 10))
            await loop.run_in_executor(self.compute, self.release_idle_caches, ttl_s)

    def release_idle_caches(self, ttl_s: float) -> int:
        """One pass of reclaim_idle_caches: frees, logs and counts the caches idle for ttl_s seconds."""
        freed = 0
        for name, runner in list(self.runners.items()):
            gone = runner.kv.release_idle(ttl_s)
            if gone:
                logger.warning("%s: freed %d KV cache(s) no micro-batch used for %.0f s (limits.kv_idle_ttl_s): %s",
                               name, len(gone), ttl_s, ", ".join(gone[:10]) + (" ..." if len(gone) > 10 else ""))
                metrics.KV_RECLAIMED.labels(name, self.node_id).inc(len(gone))
                freed += len(gone)
        return freed

    def _run(self, runner: ShardRunner, batch: MicroBatch, owner: int, in_flight: int) -> BatchResult:
        """One micro-batch on the compute thread, with the threads the machine's busy nodes leave it."""
        with self.cores.running(in_flight):
            return runner.run(batch, owner)

    def _submit(self, runner: ShardRunner, batch: MicroBatch, owner: int, in_flight: int
                ) -> asyncio.Future[BatchResult]:
        return asyncio.get_running_loop().run_in_executor(self.compute, self._run, runner, batch, owner, in_flight)

    def memory_used_bytes(self, skip: str = "") -> int:
        """Weights + KV budgets of the shards held and of the loads under way (but those of model ``skip``)."""
        held = sum(r.model.weight_bytes() + r.kv.capacity_tokens * r.kv.bytes_per_token
                   for name, r in list(self.runners.items()) if name != skip)
        return held + sum(size for name, size in list(self._reserved.values()) if name != skip)

    def num_sequences(self) -> int:
        return sum(r.kv.num_sequences for r in self.runners.values())

    def shard_info(self, runner: ShardRunner) -> shard_pb2.ShardInfo:
        spec = runner.spec
        return shard_pb2.ShardInfo(
            model=runner.name, layers=wire.layer_range_to_proto(runner.layers), num_layers_total=spec.num_layers,
            dtype=tensors.DTYPE_NAMES[runner.dtype], device=str(runner.device), architecture=spec.model_type,
            has_embedding=runner.model.embed_tokens is not None, has_head=runner.is_last,
            weight_bytes=runner.model.weight_bytes(), layer_weight_bytes=runner.model.layer_weight_bytes(),
            kv_capacity_tokens=runner.kv.capacity_tokens, kv_used_tokens=runner.kv.reserved_tokens,
            num_sequences=runner.kv.num_sequences, hidden_size=spec.hidden_size, vocab_size=spec.vocab_size,
            kv_capacity_bytes=runner.kv.capacity_tokens * runner.kv.bytes_per_token,
            quantization=runner.quantization, kernel=runner.kernel, kv_block_size=runner.kv.block_size,
            kv_blocks_total=runner.kv.num_blocks, kv_blocks_used=runner.kv.used_blocks,
            kv_cached_blocks=runner.kv.cached_blocks,
        )

    async def LoadShard(self, request: shard_pb2.LoadShardRequest, context: grpc.aio.ServicerContext
                        ) -> shard_pb2.ShardInfo:
        """Loads only the tensors of layers [start, end) (plus embedding / head where they belong)."""
        try:
            plan = plan_load(request, self.default_kv_tokens)
        except LoadRefused as e:
            await context.abort(e.code, str(e))
        if request.dry_run:
            return plan.dry_run_info()
        existing = self.runners.get(request.model)
        if existing and existing.layers == plan.layers and existing.model_dir == plan.model_dir \
                and tensors.DTYPE_NAMES[existing.dtype] == request.dtype and existing.quantization == plan.quantization:
            return self.shard_info(existing)
        reservation = await self._reserve(plan, context)
        logger.info("loading %s layers %s of %d (%s, quantization %s, %s) from %s", request.model, plan.layers,
                    plan.spec.num_layers, request.dtype, plan.quantization, plan.device, plan.model_dir)
        max_sequences = request.max_sequences if request.max_sequences > 0 else DEFAULT_MAX_SEQUENCES
        try:
            runner = await asyncio.get_running_loop().run_in_executor(self.compute, lambda: ShardRunner(
                request.model, plan.model_dir, plan.spec, plan.layers, plan.dtype, plan.device, plan.kv_tokens,
                max_sequences, plan.quantization))
        except (CheckpointError, UnsupportedArchitecture, ValueError) as e:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"cannot load {request.model}: {e}")
        finally:  # failed or cancelled: the bytes are free again; loaded: the runner counts them from now on
            self._reserved.pop(reservation, None)
        self.runners[request.model] = runner
        # the float copies of quantized blocks are freed, but glibc keeps their pages: give them back (RSS)
        await asyncio.get_running_loop().run_in_executor(self.compute, release_memory)
        info = self.shard_info(runner)
        logger.info("ready: %s layers %s, %.1f MB of weights (%.1f MB in layers), KV budget %d tokens (%.1f MB); %s",
                    request.model, plan.layers, info.weight_bytes / 1e6, info.layer_weight_bytes / 1e6,
                    plan.kv_tokens, plan.kv_tokens * runner.kv.bytes_per_token / 1e6, runner.kernel)
        return info

    async def _reserve(self, plan: LoadPlan, context: grpc.aio.ServicerContext) -> int:
        """Reserves the shard's bytes within the memory budget (RESOURCE_EXHAUSTED when they do not fit)."""
        size = plan.size
        async with self._budget_lock:  # concurrent loads each count the others' reservations
            others = self.memory_used_bytes(skip=plan.model)
            if not self.memory_budget_bytes or others + size.total_bytes <= self.memory_budget_bytes:
                reservation = next(self._reserve_ids)
                self._reserved[reservation] = (plan.model, size.total_bytes)
                return reservation
        await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, (
            f"node {self.node_id}: {plan.model} layers {plan.layers} needs {size.total_bytes / 2**20:.0f} MiB "
            f"(weights {size.weight_bytes / 2**20:.0f} + KV {size.kv_bytes / 2**20:.0f}) but only "
            f"{(self.memory_budget_bytes - others) / 2**20:.0f} MiB of its {self.memory_budget_bytes / 2**20:.0f} "
            f"MiB budget are free (loads under way count)"))
        raise AssertionError("abort raises")  # pragma: no cover

    async def UnloadShard(self, request: shard_pb2.UnloadShardRequest, context: grpc.aio.ServicerContext
                          ) -> shard_pb2.UnloadShardResponse:
        """Drops a model's shard and its KV caches, and gives the memory back to the operating system."""
        runner = self.runners.pop(request.model, None)
        if runner is None:
            return shard_pb2.UnloadShardResponse(unloaded=False)
        metrics.forget_model(request.model)
        self.context.mailbox.forget_model(request.model)
        before = rss_bytes()
        del runner
        await asyncio.get_running_loop().run_in_executor(self.compute, release_memory)
        logger.info("unloaded %s: RSS %.0f -> %.0f MB", request.model, before / 1e6, rss_bytes() / 1e6)
        return shard_pb2.UnloadShardResponse(unloaded=True)

    async def Forward(self, request_iterator: AsyncIterator[shard_pb2.ForwardRequest],
                      context: grpc.aio.ServicerContext) -> AsyncIterator[shard_pb2.ForwardResponse]:
        """Runs micro-batches in order; a refused batch answers with an error and the stream goes on. Closing the
        stream frees every KV cache it created."""
        owner = next(self._stream_ids)
        try:
            async for reply in ForwardSession(self.context, owner).replies(request_iterator):
                yield reply
        finally:
            freed = sum(r.kv.release_owner(owner) for r in self.runners.values())
            if freed:
                logger.info("Forward stream %d closed: freed %d KV cache(s)", owner, freed)

    async def Handoff(self, request_iterator: AsyncIterator[shard_pb2.HandoffRequest],
                      context: grpc.aio.ServicerContext) -> AsyncIterator[shard_pb2.HandoffAck]:
        """The previous stage's outputs (shard-to-shard forwarding): each is stored for its micro-batch and
        acknowledged at once."""
        async for handoff in request_iterator:
            error = "" if handoff.model in self.runners else \
                f"model {handoff.model!r} is not loaded on node {self.node_id}"
            error = error or self.context.mailbox.deliver(handoff)
            if error or handoff.want_ack:
                yield shard_pb2.HandoffAck(batch_id=handoff.batch_id, error=error)

    async def Release(self, request: shard_pb2.ReleaseRequest, context: grpc.aio.ServicerContext
                      ) -> shard_pb2.ReleaseResponse:
        """Frees the KV caches of the named sequences (unknown ids are ignored), after the prefix cache's keeps and
        evictions."""
        runner = self.runners.get(request.model)
        if runner is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"model {request.model!r} is not loaded here")
            raise AssertionError("abort raises")  # pragma: no cover
        try:
            keep, evict = prefix_cache_updates(runner.kv, request.keep_blocks, request.evict_block_hashes)
        except BatchError as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
            raise AssertionError("abort raises") from None  # pragma: no cover
        runner.update_prefix_cache(keep, evict)
        return shard_pb2.ReleaseResponse(released=sum(runner.kv.release(s) for s in request.seq_ids))

    async def Profile(self, request: shard_pb2.ProfileRequest, context: grpc.aio.ServicerContext
                      ) -> shard_pb2.NodeProfile:
        """Times one layer of the model's shape and format here (shard_node/profile.py), on the compute thread with
        the threads a lone micro-batch gets."""
        try:
            plan = plan_load(request.shard, self.default_kv_tokens)
        except LoadRefused as e:
            await context.abort(e.code, str(e))

        def measure() -> LayerProfile:
            with self.cores.running(1):
                return profile_layers(plan.spec, plan.dtype, plan.device, plan.quantization)

        p = await asyncio.get_running_loop().run_in_executor(self.compute, measure)
        used = self.memory_used_bytes()
        logger.info("profiled %s (%s, %s): decode %s ms per layer, head %s ms", plan.model, plan.dtype_name,
                    plan.quantization, {n: round(s * 1e3, 2) for n, s in p.decode_s.items()},
                    {n: round(s * 1e3, 2) for n, s in p.head_s.items()})
        return shard_pb2.NodeProfile(
            node_id=self.node_id, model=plan.model, prefill_token_seconds=p.prefill_token_s, threads=p.threads,
            decode=[shard_pb2.RowsTime(rows=n, seconds=s) for n, s in p.decode_s.items()],
            head=[shard_pb2.RowsTime(rows=n, seconds=s) for n, s in p.head_s.items()], measured_seconds=p.seconds,
            kernel=kernel_description(plan.quantization, plan.device), memory_budget_bytes=self.memory_budget_bytes,
            memory_free_bytes=max(self.memory_budget_bytes - used, 0) if self.memory_budget_bytes else 0)

    async def MeasureLinks(self, request: shard_pb2.MeasureLinksRequest, context: grpc.aio.ServicerContext
                           ) -> shard_pb2.MeasureLinksResponse:
        """The round trip from this node to each address (shard_node/link_probe.py)."""
        try:
            addresses, samples = check_request(request)
        except BadRequest as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        return shard_pb2.MeasureLinksResponse(links=await measure_links(addresses, samples))

    async def Info(self, request: shard_pb2.InfoRequest, context: grpc.aio.ServicerContext) -> shard_pb2.NodeInfo:
        """Shards held, KV use, memory."""
        return self.node_info()

    def node_info(self) -> shard_pb2.NodeInfo:
        shards = [self.shard_info(r) for r in list(self.runners.values())]  # also read from the metrics thread
        return shard_pb2.NodeInfo(node_id=self.node_id, shards=shards,
                                  rss_bytes=rss_bytes(), host_id=host_id(), cpu_count=cpu_count(),
                                  memory_budget_bytes=self.memory_budget_bytes,
                                  memory_used_bytes=self.memory_used_bytes())
