"""A model's size as the nodes measure it (dry-run LoadShard), and fitting configured splits into the nodes'
memory budgets."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace
from pathlib import Path

import grpc

from coordinator.model_meta import read_model_meta
from coordinator.node_client import ModelLoad, NodeClient, NodeClients
from coordinator.placement import DoesNotFit, ModelSizes, fit_ranges
from protos import shard_pb2
from protos.config import Config, ModelConfig
from protos.data_structures import LayerRange

logger = logging.getLogger(__name__)
MEASURE_RETRY_S = 1.0  # a node that is not up yet is asked again this much later


def model_load(m: ModelConfig, model_dir: Path) -> ModelLoad:
    """What a dry-run LoadShard of ``m`` sends (``model_dir``: its folder in the model cache)."""
    return ModelLoad(m.name, str(model_dir), m.dtype, m.device, m.kv_cache_tokens, quantization=m.quantization)


async def measure(client: NodeClient, load: ModelLoad, num_layers: int) -> ModelSizes:
    """Exact bytes of one layer, its KV budget, and the first and last stage's extras, from a node."""

    async def size(start: int, end: int) -> shard_pb2.ShardInfo:
        return await client.load(load.shard(LayerRange(start, end), dry_run=True))

    if num_layers == 1:
        only = await size(0, 1)
        return ModelSizes(only.weight_bytes, only.kv_capacity_bytes, 0, 0)
    first, last = await size(0, 1), await size(num_layers - 1, num_layers)
    middle = await size(1, 2) if num_layers > 2 else None
    layer = middle.layer_weight_bytes if middle else first.layer_weight_bytes
    return ModelSizes(layer, first.kv_capacity_bytes, first.weight_bytes - first.layer_weight_bytes,
                      last.weight_bytes - last.layer_weight_bytes)


async def _measure_when_up(client: NodeClient, load: ModelLoad, num_layers: int, wait_s: float
                           ) -> ModelSizes | None:
    """``measure``, asking again while the node is not up yet, for up to ``wait_s``; None if it never answers."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return await measure(client, load, num_layers)
        except grpc.aio.AioRpcError as e:
            if e.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                logger.error("model %s: could not measure its size on %s to fit the memory budgets (%s: %s); "
                             "splitting by compute only", load.model, client.node_id, e.code().name, e.details())
                return None
            await asyncio.sleep(MEASURE_RETRY_S)


async def fit_budgets(config: Config, clients: NodeClients, m: ModelConfig) -> ModelConfig:
    """A configured model on nodes with memory budgets (``nodes[].memory_mb``) and no explicit layer_ranges:
    the compute-balanced split if every stage fits its node's budget, else the most even split where each
    stage fits (sizes measured by a dry-run LoadShard on its first node, waited for)."""
    nodes = clients.nodes
    free = [min((nodes[n].memory_mb * 2**20 for n in replicas if nodes[n].memory_mb), default=None)
            for replicas in m.stages]
    if m.layer_ranges is not None or all(f is None for f in free):
        return m
    meta = read_model_meta(config.model_dir(m.name), m.max_context)
    sizes = await _measure_when_up(clients[m.stages[0][0]], model_load(m, config.model_dir(m.name)), meta.num_layers,
                                   config.coordinator.connect_timeout_s)
    if sizes is None:
        return m
    capacities = [min(nodes[n].capacity for n in replicas) for replicas in m.stages]
    try:
        ranges = fit_ranges(meta.num_layers, sizes, free, capacities, meta.head_cost)
    except DoesNotFit as e:
        logger.error("model %s does not fit the memory budgets of its nodes: %s", m.name, e)
        return m
    plan = ", ".join(f"{'+'.join(r)} {rng} ({sizes.stage_bytes(rng, meta.num_layers) / 2**20:.0f} of "
                     f"{f / 2**20 if f else float('inf'):.0f} MiB)" for r, rng, f in zip(m.stages, ranges, free))
    logger.info("model %s: split to fit the nodes' memory budgets: %s", m.name, plan)
    return replace(m, layer_ranges=tuple(ranges))
