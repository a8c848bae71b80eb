"""Prometheus metrics of the coordinator, served on ``coordinator.metrics_port``.

Names follow vLLM's where the meaning matches (``vllm:time_to_first_token_seconds`` is
``shardline_time_to_first_token_seconds`` here), so dashboards and habits carry over. Every series has
``model_name``; per-node series also have ``node``. Gauges of state (running, waiting, KV, node states)
are read from the engines when Prometheus scrapes, so they are never stale.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import REGISTRY, Collector

from coordinator.traffic import TrafficHistory

LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 20.0,
                   40.0, 80.0)
REQUEST_BUCKETS = (0.1, 0.3, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 60.0, 120.0, 300.0)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
RTT_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)

# --- requests (as vLLM) -----------------------------------------------------------------------------------
TTFT = Histogram("shardline_time_to_first_token_seconds", "arrival to first generated token", ["model_name"],
                 buckets=LATENCY_BUCKETS)
ITL = Histogram("shardline_inter_token_latency_seconds", "time between two generated tokens of a request",
                ["model_name"], buckets=LATENCY_BUCKETS)
E2E = Histogram("shardline_e2e_request_latency_seconds", "arrival to finish", ["model_name"], buckets=REQUEST_BUCKETS)
QUEUE = Histogram("shardline_request_queue_time_seconds", "time waiting for KV room before the prefill",
                  ["model_name"], buckets=REQUEST_BUCKETS)
PROMPT_TOKENS = Counter("shardline_prompt_tokens", "prompt tokens of admitted requests", ["model_name"])
GENERATION_TOKENS = Counter("shardline_generation_tokens", "generated tokens", ["model_name"])
SUCCESS = Counter("shardline_request_success", "finished requests by finish reason (eos, stop, length, cancelled)",
                  ["model_name", "finished_reason"])
FAILURES = Counter("shardline_request_failure", "requests that ended with an error", ["model_name"])

# --- the pipeline (ours) ----------------------------------------------------------------------------------
STAGE_SECONDS = Histogram("shardline_stage_forward_seconds",
                          "compute time of one micro-batch on one stage (phase: prefill if it holds prompt rows)",
                          ["model_name", "node", "phase"], buckets=LATENCY_BUCKETS)
BATCH_SEQS = Histogram("shardline_micro_batch_size", "sequences in one micro-batch", ["model_name"],
                       buckets=SIZE_BUCKETS)
BATCH_TOKENS = Histogram("shardline_micro_batch_tokens", "rows (tokens) in one micro-batch", ["model_name"],
                         buckets=SIZE_BUCKETS)
HIDDEN_BYTES = Counter("shardline_hidden_state_bytes", "bytes of hidden states sent to a stage (one hop)",
                       ["model_name", "node"])
STAGE_BUSY = Counter("shardline_stage_busy_seconds", "seconds a stage (node) computed micro-batches of a model; its "
                     "rate is the stage's busy share (1 = never idle)", ["model_name", "node"])
LINK_BYTES = Counter("shardline_link_bytes", "bytes of hidden states and tokens sent over a link (src -> dst: node "
                     "ids or coordinator)", ["model_name", "src", "dst"])
LINK_RTT = Histogram("shardline_link_round_trip_seconds", "one round trip over a link, as measured by a micro-batch",
                     ["model_name", "src", "dst"], buckets=RTT_BUCKETS)
# speculative decoding: the acceptance rate is accepted / proposed, the tokens per verify step
# (accepted + steps) / steps
DRAFT_PROPOSED = Counter("shardline_spec_decode_num_draft_tokens", "draft tokens verified (speculative decoding)",
                         ["model_name"])
DRAFT_ACCEPTED = Counter("shardline_spec_decode_num_accepted_tokens", "draft tokens accepted", ["model_name"])
# prefix caching (as vLLM's prefix_cache_queries / prefix_cache_hits): the hit rate is hits / queries
PREFIX_QUERIES = Counter("shardline_prefix_cache_queries", "prompt tokens of admitted requests that could use the "
                         "prefix cache", ["model_name"])
PREFIX_HITS = Counter("shardline_prefix_cache_hits", "of those, tokens whose KV came from the prefix cache",
                      ["model_name"])
DRAFT_STEPS = Counter("shardline_spec_decode_num_drafts", "sequence steps that verified drafts (each yields its "
                      "accepted drafts plus one token)", ["model_name"])
TRAFFIC = TrafficHistory()  # the last few minutes of the three above, per model (Cluster RPC, the web UI)

# --- failures ---------------------------------------------------------------------------------------------
FAILOVERS = Counter("shardline_failovers", "sequences replayed on other nodes after a node of their route was lost",
                    ["model_name"])
RECOVERIES = Counter("shardline_failover_recoveries", "failed-over sequences that produced their next token",
                     ["model_name"])
RECOVERY_SECONDS = Histogram("shardline_failover_recovery_seconds",
                             "time from a node loss to the next token of an affected sequence", ["model_name"],
                             buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60))
REBALANCES = Counter("shardline_rebalances", "live re-placements of a model onto a new layout",
                     ["model_name", "trigger"])
MOVED = Counter("shardline_rebalance_moved_requests", "requests moved to a new layout (replayed there)", ["model_name"])
NODE_DOWN = Counter("shardline_node_down", "times a node was found down (health polls or a broken stream)",
                    ["model_name", "node"])

NODE_STATES = ("loading", "ready", "draining", "down")


class StateCollector(Collector):
    """Gauges read at scrape time from the engines and the membership (``snapshot`` returns them)."""

    def __init__(self, snapshot: Callable[[], ClusterSnapshot]) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[GaugeMetricFamily]:
        snap = self.snapshot()
        running = GaugeMetricFamily("shardline_num_requests_running", "requests admitted and generating",
                                    labels=["model_name"])
        waiting = GaugeMetricFamily("shardline_num_requests_waiting", "requests queued for KV room",
                                    labels=["model_name"])
        in_flight = GaugeMetricFamily("shardline_micro_batches_in_flight", "micro-batches inside the pipeline",
                                      labels=["model_name"])
        depth = GaugeMetricFamily("shardline_pipeline_depth", "lanes: micro-batches that may be in flight",
                                  labels=["model_name"])
        kv_used = GaugeMetricFamily("shardline_kv_cache_used_tokens", "KV positions reserved on a node",
                                    labels=["model_name", "node"])
        kv_cap = GaugeMetricFamily("shardline_kv_cache_capacity_tokens", "KV budget of a node's shard",
                                   labels=["model_name", "node"])
        replica = GaugeMetricFamily("shardline_replica_state", "1 for the state a node's shard of a model is in",
                                    labels=["model_name", "node", "state"])
        cached = GaugeMetricFamily("shardline_prefix_cache_blocks", "KV blocks a node's prefix cache holds",
                                   labels=["model_name", "node"])
        hit_rate = GaugeMetricFamily("shardline_prefix_cache_hit_rate", "share of prompt tokens served from the "
                                     "prefix cache since start (0 before any)", labels=["model_name"])
        for m in snap.models:
            running.add_metric([m.name], m.running)
            waiting.add_metric([m.name], m.waiting)
            in_flight.add_metric([m.name], m.in_flight)
            depth.add_metric([m.name], m.depth)
            hit_rate.add_metric([m.name], m.prefix_hit_rate)
            for r in m.replicas:
                cached.add_metric([m.name, r.node], r.cached_blocks)
                kv_used.add_metric([m.name, r.node], r.kv_used)
                kv_cap.add_metric([m.name, r.node], r.kv_capacity)
                for state in NODE_STATES:
                    replica.add_metric([m.name, r.node, state], 1.0 if r.state == state else 0.0)
        up = GaugeMetricFamily("shardline_node_up", "1 when the node answers its health checks", labels=["node"])
        node_state = GaugeMetricFamily("shardline_node_state", "1 for the state the node is in",
                                       labels=["node", "state"])
        for n in snap.nodes:
            up.add_metric([n.node], 1.0 if n.state != "down" else 0.0)
            for s in NODE_STATES:
                node_state.add_metric([n.node, s], 1.0 if n.state == s else 0.0)
        yield from (running, waiting, in_flight, depth, kv_used, kv_cap, replica, cached, hit_rate, up, node_state)


@dataclass(frozen=True)
class ReplicaSnapshot:
    node: str
    state: str
    kv_used: int
    kv_capacity: int
    cached_blocks: int = 0  # in its prefix cache


@dataclass(frozen=True)
class ModelSnapshot:
    name: str
    running: int
    waiting: int
    in_flight: int
    depth: int
    replicas: list[ReplicaSnapshot]
    prefix_hit_rate: float = 0.0


@dataclass(frozen=True)
class NodeSnapshot:
    node: str
    state: str


@dataclass(frozen=True)
class ClusterSnapshot:
    models: list[ModelSnapshot]
    nodes: list[NodeSnapshot]


def init_model(model: str, nodes: list[str]) -> None:
    """Creates a model's series at zero, so dashboards show 0 (not "no data") before the first event."""
    for metric in (FAILOVERS, RECOVERIES, RECOVERY_SECONDS, FAILURES, PROMPT_TOKENS, GENERATION_TOKENS,
                   DRAFT_PROPOSED, DRAFT_ACCEPTED, DRAFT_STEPS, PREFIX_QUERIES, PREFIX_HITS):
        metric.labels(model)
    for node in nodes:
        NODE_DOWN.labels(model, node)
        STAGE_BUSY.labels(model, node)


def observe_stage(model: str, node: str, busy_s: float) -> None:
    """A stage (node) of ``model`` computed for ``busy_s`` seconds (one micro-batch)."""
    busy_s = max(0.0, busy_s)
    STAGE_BUSY.labels(model, node).inc(busy_s)
    TRAFFIC.add_stage(model, node, busy_s)


def observe_link(model: str, src: str, dst: str, nbytes: int, rtt_s: float | None = None) -> None:
    """``nbytes`` of hidden states / tokens crossed the link src -> dst (node ids, or "coordinator"), and one
    round trip on it took ``rtt_s`` (None when not measured for this micro-batch)."""
    LINK_BYTES.labels(model, src, dst).inc(max(0, nbytes))
    if rtt_s is not None and rtt_s >= 0:
        LINK_RTT.labels(model, src, dst).observe(rtt_s)
    TRAFFIC.add_link(model, src, dst, nbytes, rtt_s)


# all have model_name
MODEL_SERIES = (TTFT, ITL, E2E, QUEUE, PROMPT_TOKENS, GENERATION_TOKENS, SUCCESS, FAILURES, STAGE_SECONDS, BATCH_SEQS,
                BATCH_TOKENS, HIDDEN_BYTES, FAILOVERS, RECOVERIES, RECOVERY_SECONDS, NODE_DOWN, STAGE_BUSY, LINK_BYTES,
                LINK_RTT, DRAFT_PROPOSED, DRAFT_ACCEPTED, DRAFT_STEPS, PREFIX_QUERIES, PREFIX_HITS, REBALANCES, MOVED)
NODE_SERIES = (STAGE_SECONDS, HIDDEN_BYTES, NODE_DOWN, STAGE_BUSY)  # those that also have node
LINK_SERIES = (LINK_BYTES, LINK_RTT)  # those with src and dst (a node at either end)


def forget_model(model: str) -> None:
    """Deletes every series of a removed model (all its nodes included), so /metrics stops exporting them."""
    for metric in MODEL_SERIES:
        metric.remove_by_labels({"model_name": model})
    TRAFFIC.forget_model(model)


def forget_model_on(model: str, node: str) -> None:
    """Deletes a model's series of one node (the model no longer has a shard there)."""
    for metric in NODE_SERIES:
        metric.remove_by_labels({"model_name": model, "node": node})
    for link in LINK_SERIES:
        link.remove_by_labels({"model_name": model, "src": node})
        link.remove_by_labels({"model_name": model, "dst": node})


def forget_node(node: str) -> None:
    """Deletes every series of a node removed from the cluster, whatever model it served."""
    for metric in NODE_SERIES:
        metric.remove_by_labels({"node": node})
    for link in LINK_SERIES:
        link.remove_by_labels({"src": node})
        link.remove_by_labels({"dst": node})
    TRAFFIC.forget_node(node)


def register_state(snapshot: Callable[[], ClusterSnapshot]) -> None:
    REGISTRY.register(StateCollector(snapshot))
