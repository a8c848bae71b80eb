"""GET /health (the process is up) and GET /ready (a generation through every stage works)."""

from __future__ import annotations

import time

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from api.deps import get_config, get_readiness
from api.errors import error_body, redact_paths
from api.readiness import Readiness
from api.routes import ERROR_RESPONSES
from api.schemas import HealthResponse, ModelReadiness, ReadyResponse
from protos.config import Config

router = APIRouter(tags=["health"])


@router.get("/health", response_model=HealthResponse)
async def health() -> HealthResponse:
    """The API process is up. Says nothing about the pipeline behind it (see /ready). Needs no API key."""
    return HealthResponse(status="ok")


@router.get("/ready", response_model=ReadyResponse,
            responses={503: {"model": ReadyResponse, "description": "some model cannot generate; the detail says why"},
                       401: ERROR_RESPONSES[401]})
async def ready(readiness: Readiness = Depends(get_readiness), config: Config = Depends(get_config)) -> JSONResponse:
    """Ready only when a one-token generation through every stage of every served model succeeded within
    the last few seconds (api.ready_ttl_s). 503 otherwise, naming the model and the node at fault."""
    report = await readiness.report()
    cache = (config.model_cache_dir,)  # node errors may name its folders: never shown
    body = ReadyResponse(
        status="ready" if report.ready else "unavailable",
        checked_seconds_ago=round(time.monotonic() - report.checked_at, 3),
        models=[ModelReadiness(model=p.model, ready=p.ready, detail=redact_paths(p.detail, cache), probe_ms=p.probe_ms)
                for p in report.models]).model_dump()
    if report.ready:
        return JSONResponse(body)
    why = redact_paths("; ".join(f"{p.model}: {p.detail}" for p in report.models if not p.ready), cache)
    return JSONResponse({**body, **error_body(503, f"not ready: {why}")}, status_code=503)
