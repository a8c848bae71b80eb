"""Admin routes (behind the API key when keys are set): models added and removed at runtime, nodes that join.

POST /api/models answers once the model is serving, unavailable or pending (too large for the free memory
now: the coordinator tries again by itself). POST /api/models/{name}/rebalance answers once the model serves on its
new layout (or why it stays). DELETE /api/models/{name} answers once it is unloaded."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query
from fastapi.responses import JSONResponse

from api.admin_schemas import (
    AddModelRequest,
    ModelsResponse,
    ModelStatus,
    NodeMemoryInfo,
    NodeRss,
    PlacementEntry,
    RegisterNodeRequest,
    RegisterNodeResponse,
    RemoveModelResponse,
)
from api.backend import Backend
from api.deps import get_backend
from api.placement_schemas import (
    PlacementPreviewResponse,
    RebalanceBody,
    RebalanceResponse,
    preview_response,
    rebalance_response,
)
from api.routes import ERROR_RESPONSES
from protos import coordinator_pb2, wire
from protos.data_structures import LayerRange

router = APIRouter(tags=["admin"])


def _status(m: coordinator_pb2.ModelInfo) -> ModelStatus:
    return ModelStatus(name=m.name, state=m.state, source=m.source, dtype=m.dtype, quantization=m.quantization,
                       forwarding=m.forwarding, wire_dtype=m.wire_dtype, speculative=m.speculative,
                       num_speculative_tokens=m.num_speculative_tokens, draft_model=m.draft_model,
                       reason=m.unavailable_reason, num_layers=m.num_layers, placement=[
                           PlacementEntry(stage=s.stage, layers=[s.layers.start, s.layers.end], node=s.node_id,
                                          state=s.state, weight_bytes=s.weight_bytes,
                                          kv_capacity_tokens=s.kv_capacity_tokens) for s in m.stages])


@router.get("/api/models", response_model=ModelsResponse, responses=ERROR_RESPONSES)
async def list_models(backend: Backend = Depends(get_backend)) -> ModelsResponse:
    """Every model with its state (pending, loading, serving, unavailable, draining) and placement, and each
    node's memory: budget, what its shards hold, RSS."""
    info = await backend.cluster()
    nodes = [NodeMemoryInfo(node=n.node_id, budget_bytes=n.memory_budget_bytes or None, used_bytes=n.memory_used_bytes,
                            rss_bytes=n.rss_bytes) for n in info.nodes]
    return ModelsResponse(models=[_status(m) for m in info.models], nodes=nodes)


@router.post("/api/models", response_model=ModelStatus, status_code=201,
             responses={**ERROR_RESPONSES, 202: {"model": ModelStatus, "description": "accepted but pending: it does "
                                                 "not fit the free memory now and loads once it does"},
                        200: {"model": PlacementPreviewResponse, "description": "with dry_run: the plan"}})
async def add_model(body: AddModelRequest, backend: Backend = Depends(get_backend),
                    dry_run: bool = Query(False, description="only the plan (nodes, ranges, memory per node, "
                                          "predicted tokens/s), nothing loaded"),
                    remeasure: bool = Query(False, description="with dry_run: measure the nodes' speed profiles "
                                            "again first")) -> JSONResponse:
    """Serves a model from the model cache. 201 once it is loaded (serving); 202 while it is pending. Without
    nodes it is placed for speed: the nodes' profiles predict each split's tokens per second (dry_run shows it)."""
    stages = [coordinator_pb2.StageNodes(node_ids=[e] if isinstance(e, str) else e) for e in body.nodes or []]
    ranges = [wire.layer_range_to_proto(LayerRange(*r)) for r in body.layer_ranges or []]  # checked by the schema
    request = coordinator_pb2.AddModelRequest(
        name=body.name, source=body.source or body.name, dtype=body.dtype, quantization=body.quantization,
        forwarding=body.forwarding, wire_dtype=body.wire_dtype, speculative=body.speculative,
        num_speculative_tokens=body.num_speculative_tokens, draft_model=body.draft_model, device=body.device,
        replicas=body.replicas,
        stages=stages, layer_ranges=ranges, kv_cache_tokens=body.kv_cache_tokens, max_context=body.max_context or 0,
        expected_concurrency=body.expected_concurrency)
    if dry_run:
        request.remeasure = remeasure
        return JSONResponse(preview_response(await backend.preview_model(request)).model_dump())
    info = await backend.add_model(request)
    status = _status(info)
    return JSONResponse(status.model_dump(), status_code=202 if info.state == "pending" else 201)


@router.delete("/api/models/{name}", response_model=RemoveModelResponse, responses=ERROR_RESPONSES)
async def remove_model(name: str, backend: Backend = Depends(get_backend),
                       timeout_s: float | None = Query(None, gt=0, le=3600, description=(
                           "how long in-flight requests may finish (default coordinator.drain_timeout_s)"))
                       ) -> RemoveModelResponse:
    """Graceful: stops admitting, lets in-flight requests finish up to the timeout, unloads every shard and
    frees its memory. New requests for it get 404 from the moment removal starts."""
    reply = await backend.remove_model(name, timeout_s or backend.config.coordinator.drain_timeout_s)
    return RemoveModelResponse(name=name, nodes=[NodeRss(node=n.node_id, rss_before_bytes=n.rss_before,
                                                         rss_after_bytes=n.rss_after) for n in reply.nodes])


@router.post("/api/models/{name}/rebalance", response_model=RebalanceResponse, responses=ERROR_RESPONSES)
async def rebalance_model(name: str, body: RebalanceBody | None = None, backend: Backend = Depends(get_backend)
                          ) -> RebalanceResponse:
    """Moves a serving model to the plan the coordinator would make now (for speed from the nodes' profiles, at its
    expected concurrency), live: the new layout loads beside the old, the requests move over through the failover
    replay path (no stream ends, greedy output unchanged), then the old layout is unloaded. It moves when the plan is
    predicted at least 1.05x faster, or with force; else ``changed`` is false and ``reason`` says why. 409 while it
    cannot be re-placed (loading, being removed or re-placed); 503 when the new layout does not load (it stays)."""
    body = body or RebalanceBody()
    reply = await backend.rebalance_model(coordinator_pb2.RebalanceRequest(name=name, force=body.force,
                                                                           remeasure=body.remeasure))
    return rebalance_response(reply)


@router.post("/api/nodes", response_model=RegisterNodeResponse, responses=ERROR_RESPONSES)
async def register_node(body: RegisterNodeRequest, backend: Backend = Depends(get_backend)) -> RegisterNodeResponse:
    """A node that joined the cluster: polled from now on and used for new placements and replicas."""
    return RegisterNodeResponse(id=body.id, added=await backend.register_node(body.id, body.address))
