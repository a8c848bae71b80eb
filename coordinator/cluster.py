"""Builds one engine per configured model: split layers, load shards on the nodes, open the pipeline."""

from __future__ import annotations

import asyncio
import logging

import grpc

from coordinator.engine import ModelEngine
from coordinator.model_meta import ModelMeta, read_model_meta
from coordinator.partition import check_explicit_ranges, partition_layers
from coordinator.pipeline import Pipeline, Stage
from coordinator.scheduler import Scheduler
from coordinator.stage_client import StageClient
from protos import shard_pb2, wire
from protos.config import Config, ModelConfig
from protos.data_structures import LayerRange

logger = logging.getLogger(__name__)


def plan_ranges(config: Config, model: ModelConfig, meta: ModelMeta) -> list[LayerRange]:
    if model.layer_ranges is not None:
        return check_explicit_ranges(meta.num_layers, model.layer_ranges)
    return partition_layers(meta.num_layers, [config.node(n).capacity for n in model.nodes], meta.head_cost)


def default_depth(stage_hosts: list[tuple[str, int]]) -> int:
    """Micro-batches in flight, from each stage's (host id, cores): one per stage, so every stage works at once.

    Stages that share a machine share its cores and memory bandwidth: more micro-batches than those
    cores can run only split batches smaller (each micro-batch streams all weights once) without adding
    compute, so each machine counts for at most its core count (measured: bench/ and the README).
    """
    per_host: dict[str, list[int]] = {}
    for host, cores in stage_hosts:
        per_host.setdefault(host, []).append(max(1, cores))
    return max(1, sum(min(len(stages), max(stages)) for stages in per_host.values()))


def build_engine(config: Config, model: ModelConfig) -> ModelEngine:
    """Reads the prepared model and plans its split; raises with a clear message if it cannot."""
    meta = read_model_meta(config.model_dir(model.name), model.max_context)
    ranges = plan_ranges(config, model, meta)
    stages = [Stage(StageClient(config.node(nid), model.name, config.coordinator.rpc_timeout_s), r)
              for nid, r in zip(model.nodes, ranges)]
    plan = ", ".join(f"{s.client.node.id} {s.layers}" for s in stages)
    logger.info("model %s (%s, %d layers) split across %d node(s): %s", model.name, meta.model_type,
                meta.num_layers, len(stages), plan)
    coord = config.coordinator
    scheduler = Scheduler(model.kv_cache_tokens, depth=model.pipeline_depth or len(stages),
                          max_waiting=coord.max_waiting, max_batch_tokens=coord.max_batch_tokens,
                          max_batch_seqs=coord.max_batch_seqs)
    logger.info("model %s: %d tokens / %d sequences per micro-batch, %d requests may wait", model.name,
                coord.max_batch_tokens, coord.max_batch_seqs, coord.max_waiting)
    return ModelEngine(model.name, meta, Pipeline(model.name, stages), scheduler)


async def load_engine(config: Config, model: ModelConfig, engine: ModelEngine) -> None:
    """Sends LoadShard to every node of the model (waiting for nodes to come up), then starts the engine."""
    async def load_stage(stage: Stage) -> None:
        req = shard_pb2.LoadShardRequest(
            model=model.name, model_path=str(engine.meta.path), layers=wire.layer_range_to_proto(stage.layers),
            dtype=model.dtype, device=model.device, kv_cache_tokens=model.kv_cache_tokens)
        try:
            info = await stage.client.load(req, config.coordinator.load_timeout_s)
        except grpc.aio.AioRpcError as e:
            stage.state, stage.last_error = "down", f"{e.code().name}: {e.details()}"
            raise RuntimeError(f"node {stage.client.node.id} ({stage.client.node.address}) could not load "
                               f"{model.name} layers {stage.layers}: {stage.last_error}") from None
        stage.kv_capacity_tokens = info.kv_capacity_tokens
        stage.state = "ready"
        logger.info("node %s holds %s layers %s (%.1f MB)", stage.client.node.id, model.name, stage.layers,
                    info.weight_bytes / 1e6)

    try:
        await asyncio.gather(*(load_stage(s) for s in engine.pipeline.stages))
    except RuntimeError as e:
        engine.load_error = str(e)
        logger.error("model %s is unavailable: %s", model.name, e)
        return
    engine.scheduler.kv_capacity_tokens = min(s.kv_capacity_tokens for s in engine.pipeline.stages)
    if model.pipeline_depth is None:
        infos = await asyncio.gather(*(s.client.info(10.0) for s in engine.pipeline.stages), return_exceptions=True)
        if not any(isinstance(i, BaseException) for i in infos):  # else keep one per stage
            engine.scheduler.depth = default_depth([(i.host_id or i.node_id, i.cpu_count or 1) for i in infos])
    logger.info("model %s: up to %d micro-batch(es) in flight%s", model.name, engine.scheduler.depth,
                "" if model.pipeline_depth else " (one per stage, at most one per core of a shared machine)")
    engine.ready = True
    engine.start()
    logger.info("model %s ready on %d node(s)", model.name, len(engine.pipeline.stages))
