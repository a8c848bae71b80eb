"""The answers about placement: POST /api/models?dry_run=true (the plan the coordinator would make for a model,
predicted from the nodes' speed profiles, beside the split by configured capacity; nothing is loaded) and
POST /api/models/{name}/rebalance (a live re-placement, or why the model stays)."""

from __future__ import annotations

from collections.abc import Iterable

from pydantic import BaseModel, Field

from protos import coordinator_pb2


class PlannedStageInfo(BaseModel):
    node: str
    address: str
    layers: list[int] = Field(..., description="[start, end)")
    memory_bytes: int = Field(..., description="weights + KV budget of the stage on that node")
    step_ms: float = Field(..., description="predicted compute of one decode step of one row")


class PlanFiguresInfo(BaseModel):
    stages: list[PlannedStageInfo]
    single_stream_tps: float = Field(..., description="predicted tokens/s of one stream")
    aggregate_tps: dict[str, float] = Field(..., description="concurrency -> predicted tokens/s of all streams")


class NodeSpeedEntry(BaseModel):
    node: str
    format: str = Field("", description="what was measured: model, dtype, quantization, device")
    layer_ms: float = Field(..., description="one decode step of one row, per layer")
    layer_ms_32: float = Field(..., description="one decode step of 32 rows, per layer")
    head_ms: float = Field(..., description="final norm + LM head, one row")
    prefill_token_ms: float
    rtt_ms: float = Field(..., description="the coordinator's round trip to it")
    threads: int
    kernel: str
    measured_seconds_ago: float
    memory_free_bytes: int | None = Field(None, description="null: no memory budget")


class PeerLinkEntry(BaseModel):
    node: str
    rtt_ms: float | None = Field(..., description="the least of a few health checks from one node to the other; "
                                                  "null: it could not reach it")
    measured_seconds_ago: float
    error: str = ""


def peer_link_entry(p: coordinator_pb2.PeerLink) -> PeerLinkEntry:
    return PeerLinkEntry(node=p.node_id, rtt_ms=None if p.error else round(p.rtt_ms, 3),
                         measured_seconds_ago=round(p.measured_seconds_ago, 1), error=p.error)


class LeftOut(BaseModel):
    node: str
    reason: str


class PlacementPreviewResponse(BaseModel):
    model: str
    method: str = Field(..., description="speed (chosen from the nodes' profiles) or explicit (nodes named)")
    expected_concurrency: int
    plan: PlanFiguresInfo
    capacity_split: PlanFiguresInfo = Field(..., description="the split by configured capacity over the same nodes")
    speedup: float = Field(..., description="plan / capacity split, one stream")
    left_out: list[LeftOut] = Field(default_factory=list, description="nodes that hold nothing, and why")
    nodes: list[NodeSpeedEntry]


def node_speed_entry(n: coordinator_pb2.NodeSpeedInfo) -> NodeSpeedEntry:
    return NodeSpeedEntry(node=n.node_id, format=n.format, layer_ms=round(n.layer_ms, 4),
                          layer_ms_32=round(n.layer_ms_32, 4), head_ms=round(n.head_ms, 4),
                          prefill_token_ms=round(n.prefill_token_ms, 5), rtt_ms=round(n.rtt_ms, 3), threads=n.threads,
                          kernel=n.kernel, measured_seconds_ago=round(n.measured_seconds_ago, 1),
                          memory_free_bytes=n.memory_free_bytes or None)


def _figures(f: coordinator_pb2.PlanFigures) -> PlanFiguresInfo:
    return PlanFiguresInfo(
        stages=[PlannedStageInfo(node=s.node_id, address=s.address, layers=[s.layers.start, s.layers.end],
                                 memory_bytes=s.memory_bytes, step_ms=round(s.step_seconds * 1e3, 3))
                for s in f.stages],
        single_stream_tps=round(f.single_stream_tps, 2),
        aggregate_tps={str(r.concurrency): round(r.tokens_per_second, 2) for r in f.aggregate})


def preview_response(p: coordinator_pb2.PlacementPreview) -> PlacementPreviewResponse:
    base = p.capacity_split.single_stream_tps
    return PlacementPreviewResponse(
        model=p.model, method=p.method, expected_concurrency=p.expected_concurrency, plan=_figures(p.plan),
        capacity_split=_figures(p.capacity_split),
        speedup=round(p.plan.single_stream_tps / base, 3) if base else 0.0,
        left_out=[LeftOut(node=x.node_id, reason=x.reason) for x in p.left_out],
        nodes=[node_speed_entry(n) for n in p.nodes])


class StageNodes(BaseModel):
    nodes: list[str] = Field(..., description="the replicas of the range")
    layers: list[int] = Field(..., description="[start, end)")


class RebalanceBody(BaseModel):
    force: bool = Field(False, description="move whenever the plan made now differs (else only when it is "
                                           "predicted at least 1.05x faster)")
    remeasure: bool = Field(False, description="measure the nodes' speed profiles again first")


class RebalanceResponse(BaseModel):
    model: str
    changed: bool = Field(..., description="the model now serves on the new layout")
    reason: str = Field("", description="why it stays (changed false)")
    trigger: str
    before: list[StageNodes]
    after: list[StageNodes] = Field(..., description="the plan made now (the new layout when changed)")
    predicted_tps_before: float | None = Field(None, description="tokens/s at expected_concurrency (null: unknown)")
    predicted_tps_after: float | None = None
    expected_concurrency: int
    moved_requests: int = Field(..., description="requests moved to the new layout (replayed there, output unchanged)")
    seconds: float = Field(..., description="from the request to the old layout unloaded")
    generation: int = Field(..., description="the model's layout now (1 = its first; shards are named name/gN)")


def rebalance_response(r: coordinator_pb2.RebalanceResponse) -> RebalanceResponse:
    def stages(layout: Iterable[coordinator_pb2.StageLayout]) -> list[StageNodes]:
        return [StageNodes(nodes=list(s.node_ids), layers=[s.layers.start, s.layers.end]) for s in layout]

    return RebalanceResponse(
        model=r.name, changed=r.changed, reason=r.reason, trigger=r.trigger, before=stages(r.before),
        after=stages(r.after), predicted_tps_before=round(r.before_tps, 2) if r.before_tps else None,
        predicted_tps_after=round(r.after_tps, 2) if r.after_tps else None,
        expected_concurrency=r.expected_concurrency, moved_requests=r.moved_requests, seconds=round(r.seconds, 2),
        generation=r.generation)
