"""Prometheus metrics of a shard node, served on its own port (``--metrics-port``).

Every series has ``node``; per-shard series also ``model_name``. KV and memory gauges are read from the
node's shards when Prometheus scrapes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import REGISTRY, Collector

from protos import shard_pb2

FORWARD_SECONDS = Histogram(
    "shardline_node_forward_seconds", "compute time of one micro-batch on this node (phase: prefill if it holds "
    "prompt rows)", ["model_name", "node", "phase"],
    buckets=(0.002, 0.005, 0.01, 0.02, 0.04, 0.08, 0.15, 0.3, 0.6, 1.2, 2.5, 5.0, 10.0))
BATCH_TOKENS = Histogram("shardline_node_batch_tokens", "rows (tokens) of one micro-batch on this node",
                         ["model_name", "node"], buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512))
REFUSED = Counter("shardline_node_batches_refused", "micro-batches refused (nothing changed on the node)",
                  ["model_name", "node", "code"])
KV_RECLAIMED = Counter("shardline_node_kv_caches_reclaimed", "KV caches freed because no micro-batch touched them for "
                       "limits.kv_idle_ttl_s (their Release failed, or the coordinator lost track of them)",
                       ["model_name", "node"])
MODEL_SERIES = (FORWARD_SECONDS, BATCH_TOKENS, REFUSED, KV_RECLAIMED)  # every labelled series has model_name


def forget_model(model: str) -> None:
    """Deletes every series of a model this node no longer holds (UnloadShard), so they are not exported forever."""
    for metric in MODEL_SERIES:
        metric.remove_by_labels({"model_name": model})


class NodeCollector(Collector):
    def __init__(self, info: Callable[[], shard_pb2.NodeInfo]) -> None:
        self.info = info

    def collect(self) -> Iterator[GaugeMetricFamily]:
        info = self.info()
        node = info.node_id
        used = GaugeMetricFamily("shardline_node_kv_cache_used_tokens", "KV positions reserved by live sequences",
                                 labels=["model_name", "node"])
        cap = GaugeMetricFamily("shardline_node_kv_cache_capacity_tokens", "KV budget of the shard",
                                labels=["model_name", "node"])
        seqs = GaugeMetricFamily("shardline_node_kv_cache_sequences", "sequences holding a KV cache",
                                 labels=["model_name", "node"])
        weights = GaugeMetricFamily("shardline_node_weight_bytes", "bytes of the shard's weights",
                                    labels=["model_name", "node"])
        for s in info.shards:
            used.add_metric([s.model, node], s.kv_used_tokens)
            cap.add_metric([s.model, node], s.kv_capacity_tokens)
            seqs.add_metric([s.model, node], s.num_sequences)
            weights.add_metric([s.model, node], s.weight_bytes)
        mem_used = GaugeMetricFamily("shardline_node_memory_used_bytes", "weights + KV budgets of its shards",
                                     labels=["node"])
        mem_used.add_metric([node], info.memory_used_bytes)
        budget = GaugeMetricFamily("shardline_node_memory_budget_bytes", "memory budget for shards (0 = no limit)",
                                   labels=["node"])
        budget.add_metric([node], info.memory_budget_bytes)
        rss = GaugeMetricFamily("shardline_node_rss_bytes", "resident memory of the node process", labels=["node"])
        rss.add_metric([node], info.rss_bytes)
        yield from (used, cap, seqs, weights, mem_used, budget, rss)


def register_state(info: Callable[[], shard_pb2.NodeInfo]) -> None:
    REGISTRY.register(NodeCollector(info))
