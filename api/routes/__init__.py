"""The API's routes, one module per group: health and readiness, Shardline's own /api/..., and the
OpenAI-compatible /v1/...; ``ERROR_RESPONSES`` documents the error shape in the OpenAPI schema."""

from __future__ import annotations

from typing import Any

from fastapi import Request

from api.backend import Backend
from api.schemas import ErrorResponse

ERROR_DESCRIPTIONS = {
    400: "the request cannot be served as given (for example the prompt or max_tokens do not fit the context)",
    401: "missing or wrong API key (only when keys are configured)",
    404: "unknown model",
    409: "the model or node already exists",
    413: "request body too large (api.max_body_bytes)",
    422: "a field is invalid; the message names it",
    429: "the model's queue is full; retry after the Retry-After header's seconds",
    503: "the pipeline (or a service behind the API) is unavailable; the message names the node",
    504: "the generation did not finish within api.request_timeout_s",
}
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text} for code, text in ERROR_DESCRIPTIONS.items()}


async def get_backend(request: Request) -> Backend:
    return request.app.state.backend
SSE_CONTENT = {"text/event-stream": {"schema": {"type": "string"}}}  # how a streamed 200 is documented
