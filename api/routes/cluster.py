"""GET /api/cluster: nodes, models, layer ranges, replica states, KV use and failovers (feeds the web UI);
DELETE /api/nodes/{node_id}: forget a node (admin)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from fastapi import APIRouter, Depends, Query

from api.admin_schemas import RemoveNodeResponse
from api.backend import Backend
from api.deps import get_backend
from api.placement_schemas import node_speed_entry, peer_link_entry
from api.routes import ERROR_RESPONSES
from api.schemas import (
    ClusterHistory,
    ClusterModel,
    ClusterNode,
    ClusterProcess,
    ClusterReplica,
    ClusterResponse,
    LinkTraffic,
    StageTraffic,
)
from protos import coordinator_pb2

router = APIRouter(tags=["cluster"])


@router.get("/api/cluster", response_model=ClusterResponse, responses=ERROR_RESPONSES)
async def cluster(backend: Backend = Depends(get_backend)) -> ClusterResponse:
    """Every node (state from the coordinator's health polls, last error, memory, KV use, recent events) and
    every model (state, each layer range with its replicas, running / waiting requests, failovers, and the last
    few minutes of each stage's busy share and each link's bytes per second and round trip)."""
    info = await backend.cluster()
    traffic = {t.model: history_of(t) for t in info.traffic}
    nodes = [ClusterNode(id=n.node_id, address=n.address, state=n.state, last_error=n.last_error,
                         last_seen=n.last_seen_unix or None, rss_bytes=n.rss_bytes, kv_used_tokens=n.kv_used_tokens,
                         kv_capacity_tokens=n.kv_capacity_tokens, events=list(n.events), rtt_ms=round(n.rtt_ms, 3),
                         profiles=[node_speed_entry(p) for p in n.profiles],
                         links=[peer_link_entry(p) for p in n.links]) for n in info.nodes]
    models = [ClusterModel(
        name=m.name, state=m.state, ready=m.ready, unavailable_reason=m.unavailable_reason, num_layers=m.num_layers,
        num_stages=m.num_stages, max_context=m.max_context, pipeline_depth=m.pipeline_depth, running=m.running,
        waiting=m.waiting, failovers=m.failovers, recoveries=m.recoveries,
        last_recovery_seconds=round(m.last_recovery_seconds, 3),
        replicas=[ClusterReplica(node=s.node_id, address=s.address, stage=s.stage,
                                 layers=[s.layers.start, s.layers.end], state=s.state, kv_used_tokens=s.kv_used_tokens,
                                 kv_capacity_tokens=s.kv_capacity_tokens, weight_bytes=s.weight_bytes,
                                 last_error=s.last_error, micro_batches=s.micro_batches,
                                 kv_blocks_used=s.kv_blocks_used, kv_blocks_total=s.kv_blocks_total,
                                 kv_block_size=s.kv_block_size) for s in m.stages],
        history=traffic.get(m.name)) for m in info.models]
    return ClusterResponse(nodes=nodes, models=models, processes=launcher_processes())


def history_of(traffic: coordinator_pb2.TrafficHistory) -> ClusterHistory:
    """The coordinator's series, rounded for JSON; a negative round trip (none measured) becomes null."""
    return ClusterHistory(
        interval_s=traffic.interval_s,
        stages=[StageTraffic(node=s.node_id, busy_share=[round(v, 4) for v in s.busy_share]) for s in traffic.stages],
        links=[LinkTraffic(src=k.src, dst=k.dst, bytes_per_s=[round(v, 1) for v in k.bytes_per_s],
                           rtt_ms=[round(v, 3) if v >= 0 else None for v in k.rtt_ms]) for k in traffic.links])


LAUNCHER_STATE_ENV = "SHARDLINE_LAUNCHER_STATE"  # ops.plan.STATE_ENV: set on the API the launcher starts


def launcher_processes() -> list[ClusterProcess]:
    """The children of `shardline up` as its children.json says (a few hundred bytes), or none."""
    path = os.environ.get(LAUNCHER_STATE_ENV, "")
    if not path:
        return []
    try:
        children = json.loads(Path(path).read_text())["children"]
        return [ClusterProcess(name=c["name"], state=c["state"], restarts=c["restarts"], exit_code=c.get("exit_code"))
                for c in children]
    except (OSError, ValueError, KeyError, TypeError):  # not written yet, or being replaced
        return []


@router.delete("/api/nodes/{node_id}", response_model=RemoveNodeResponse, responses=ERROR_RESPONSES)
async def remove_node(node_id: str, backend: Backend = Depends(get_backend),
                      drain: bool = Query(False, description="move the models serving on it to the other nodes first "
                                          "(live re-placement: no stream ends)")) -> RemoveNodeResponse:
    """Forgets a node: the coordinator stops polling it and places nothing on it; it leaves /api/cluster. 409 while
    a model (serving, loading or draining) has a shard on it, even with other replicas; with drain=true the serving
    ones move to the other ready nodes first (409 naming one that cannot: no room elsewhere). 404 for an unknown
    id."""
    reply = await backend.remove_node(node_id, drain)
    return RemoveNodeResponse(id=node_id, address=reply.address)
