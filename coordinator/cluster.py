"""Builds one engine per configured model: split layers, load shards on the nodes, open the pipeline."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from pathlib import Path

from coordinator.engine import ModelEngine
from coordinator.generations import shard_name
from coordinator.model_meta import ModelMeta, read_model_meta
from coordinator.node_client import ModelLoad, NodeClients
from coordinator.partition import check_explicit_ranges, partition_layers
from coordinator.pipeline import Pipeline, Replica, StageGroup
from coordinator.prefix_cache import PrefixIndex
from coordinator.scheduler import Scheduler
from coordinator.speculation import SpeculationConfig
from protos.config import Config, ModelConfig, NodeConfig
from protos.data_structures import LayerRange

logger = logging.getLogger(__name__)


def plan_ranges(nodes: Mapping[str, NodeConfig], model: ModelConfig, meta: ModelMeta) -> list[LayerRange]:
    if model.layer_ranges is not None:
        return check_explicit_ranges(meta.num_layers, model.layer_ranges)
    capacities = [min(nodes[n].capacity for n in replicas) for replicas in model.stages]
    return partition_layers(meta.num_layers, capacities, meta.head_cost)


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


def pipelines_prefill(mode: str, stage_hosts: list[str]) -> bool:
    """coordinator.pipelined_prefill for a model whose stages run on these machines (host ids): "auto" pipelines
    when they span more than one (on one machine the stages share its cores, and chunk after chunk with every
    core measured as fast)."""
    return mode == "always" or (mode == "auto" and len(set(stage_hosts)) > 1)


def build_engine(config: Config, model: ModelConfig, clients: NodeClients, model_dir: Path | None = None,
                 generation: int = 1) -> ModelEngine:
    """Reads the prepared model and plans its split; raises with a clear message if it cannot.

    ``clients``: every known node's client by id; ``model_dir``: default the cache's folder of the model's name;
    ``generation``: which layout of the model this is (its shards' names on the nodes, coordinator/generations.py)."""
    meta = read_model_meta(model_dir or config.model_dir(model.name), model.max_context)
    ranges = plan_ranges(clients.nodes, model, meta)
    shards = shard_name(model.name, generation)
    groups = [StageGroup(r, [Replica(clients[n], shards, r) for n in replicas])
              for replicas, r in zip(model.stages, ranges)]
    plan = ", ".join(f"{'+'.join(x.node_id for x in g.replicas)} {g.layers}" for g in groups)
    logger.info("model %s (%s, %d layers) split into %d stage(s): %s", model.name, meta.model_type,
                meta.num_layers, len(groups), plan)
    coord = config.coordinator
    max_seqs = config.limits.max_sequences_per_shard
    scheduler = Scheduler(model.kv_cache_tokens, depth=model.pipeline_depth or len(groups),
                          max_waiting=coord.max_waiting, max_batch_tokens=coord.max_batch_tokens,
                          max_batch_seqs=coord.max_batch_seqs, max_running=max_seqs,
                          prefix=PrefixIndex() if coord.prefix_caching else None)
    logger.info("model %s: %d tokens / %d sequences per micro-batch, %d requests may wait", model.name,
                coord.max_batch_tokens, coord.max_batch_seqs, coord.max_waiting)
    load = ModelLoad(shards, str(meta.path), model.dtype, model.device, model.kv_cache_tokens, max_seqs,
                     model.quantization)
    scheduler.pipelined_prefill = pipelines_prefill(coord.pipelined_prefill, [])  # "auto": decided at load
    pipeline = Pipeline(shards, groups, model.forwarding, model.wire_dtype, label=model.name)
    engine = ModelEngine(model.name, meta, pipeline, scheduler, load)
    engine.generation, engine.config = generation, model
    engine.prefill_mode = coord.pipelined_prefill
    engine.ring_decode = coord.ring_decode
    engine.speculation = SpeculationConfig(model.speculative, model.num_speculative_tokens, model.draft_model)
    return engine


async def load_engine(model: ModelConfig, engine: ModelEngine) -> None:
    """Sends LoadShard to every replica (waiting for nodes to come up), then starts the engine. Replicas that
    failed are loaded again when their node answers (see Membership)."""
    replicas = engine.pipeline.replicas
    await asyncio.gather(*(engine.replicas.load(r) for r in replicas))
    ready = [r for r in replicas if r.usable]
    infos = await asyncio.gather(*(r.client.info() for r in ready), return_exceptions=True)
    answered = [i for i in infos if not isinstance(i, BaseException)]
    hosts = [(i.host_id or i.node_id, i.cpu_count or 1) for i in answered]
    if model.pipeline_depth is None and ready and len(answered) == len(infos):  # else keep one per stage
        engine.replicas.set_depth(default_depth(hosts))
    else:
        engine.replicas.set_depth(engine.depth)
    engine.scheduler.pipelined_prefill = pipelines_prefill(engine.prefill_mode, [h for h, _ in hosts])
    logger.info("model %s: prefill chunks %s", model.name, "pipelined over the stages"
                if engine.scheduler.pipelined_prefill else "one after another (coordinator.pipelined_prefill)")
    logger.info("model %s: up to %d micro-batch(es) in flight%s", model.name, engine.depth,
                "" if model.pipeline_depth else " (one per stage, at most one per core of a shared machine)")
    engine.mark_loaded()
    engine.start()
    if engine.ready:
        logger.info("model %s ready on %d node(s)", model.name, len(ready))
    else:
        logger.error("model %s is unavailable: %s", model.name, engine.unavailable_reason())
