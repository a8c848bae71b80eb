"""Prometheus metrics of the coordinator (served on coordinator.metrics_port when it is set).

Names carry the ``shardline:`` prefix, as vLLM's carry ``vllm:``; every series has ``model_name``.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

FAILOVERS = Counter("shardline:failovers", "sequences replayed on other nodes after a node of their route was lost",
                    ["model_name"])
RECOVERIES = Counter("shardline:failover_recoveries", "failed-over sequences that produced their next token",
                     ["model_name"])
RECOVERY_SECONDS = Histogram("shardline:failover_recovery_seconds",
                             "time from a node loss to the next token of an affected sequence", ["model_name"],
                             buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60))
NODE_DOWN = Counter("shardline:node_down", "times a node was found down (health polls or a broken stream)",
                    ["model_name", "node"])
